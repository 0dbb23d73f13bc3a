"""Prices: the packaged ``prices.yaml``, a job's ``pricing:`` overrides, and the
cost of an attempt.

May import: jobs (the price schema and the YAML loader), store (to price its
attempts), errors.
"""
