"""End-to-end scenarios: whole runs of the CLI against fakes and real parts."""
