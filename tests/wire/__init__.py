"""Unit tests of batchgen.wire."""
