"""One run, phase by phase: the runner (check, lock, plan, run, export), the
engine and its journal, progress, continuation of interrupted answers, the
budget guard, ``--via batch``, the repetition guard (``guards``) and the
check of answers that must fit a schema (``structured``).

May import every package below it: batch_api, outputs, cost, jobs, llama,
wire, pacing, tokens, store, and the foundation (errors, secrets, jsonfast).
"""
