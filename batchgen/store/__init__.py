"""The run store, ``run.db``: the schema, every SQL statement batchgen runs,
named read and write methods, the records it keeps, the provider-batch rows,
and the run lock. No other package runs SQL.

May import: errors.
"""
