"""Unit tests of batchgen.pacing."""
