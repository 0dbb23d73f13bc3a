"""Tests of batchgen.tokens."""
