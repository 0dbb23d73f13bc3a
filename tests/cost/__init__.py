"""Tests of batchgen.cost (and the budget)."""
