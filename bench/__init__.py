"""batchgen's benchmark suite: `python -m bench [--quick] [--only P1,P6]`."""
