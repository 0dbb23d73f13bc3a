"""Token counts: static estimates, real tokenizers, the estimator and its
calibration, usage as reported, and the ledger that refines estimates after a run.

May import: store, errors.
"""
