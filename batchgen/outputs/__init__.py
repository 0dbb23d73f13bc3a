"""What a run leaves for people, derived from the store: ``texts/``,
``results.jsonl``, ``failed.jsonl``, the table (``export``), the reports (md,
json, csv, html and its charts), ``status`` and ``merge``; and
``audio/<id>.wav``, the one output written beside the store as a speech
answer streams.

May import: cost, jobs, tokens, store, errors, secrets.
"""
