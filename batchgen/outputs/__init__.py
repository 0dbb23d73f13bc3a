"""What a run leaves for people, all derived from the store: ``texts/``,
``results.jsonl``, ``failed.jsonl``, the reports (md, json, csv, html and its
charts), ``status`` and ``merge``.

May import: cost, jobs, tokens, store, errors, secrets.
"""
