from batchgen.cli import entry

entry()
