"""Tests of batchgen.run."""
