"""Tests of batchgen.engine."""
