"""Tests of batchgen.outputs."""
