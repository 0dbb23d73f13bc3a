"""Unit tests of batchgen.jobs."""
