"""Tests of batchgen.llama."""
