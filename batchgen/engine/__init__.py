"""One run, phase by phase: the runner (check, lock, plan, run, export), the
engine and its journal, progress, continuation of interrupted answers, the
budget guard, and ``--via batch``.

May import every package below it: batch_api, outputs, cost, jobs, llama,
wire, pacing, tokens, store, and the foundation (errors, secrets, jsonfast).
"""
