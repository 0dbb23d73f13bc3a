"""P14: a document longer than the model's output cap, continued (run.on_length).

One answer of 40,000 tokens from an endpoint whose per-call cap is 4,000
(``max_tokens: 4000``), against the fake API in partial (Model Studio) mode:
the text must be byte-identical to what the fake generates uninterrupted, and
the waste — completion tokens the server sent over those needed — ≤ 1.02.
Quick mode: 8,000 tokens at a cap of 1,000.

Then (full mode only) against the real llama-server at temperature 0 (prefill
continuation): each answer generated whole at ``max_tokens`` 384, and again at
a cap of 48 a call continued to the same total — how many come out
byte-identical, and the waste (completion tokens the server reported over
those of the whole answers).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from batchgen.testing.fakeserver import Config, plan_for
from bench.common import KEY_ENV, fake_server, measure, row

LOCAL_PROMPTS = ["Write a long essay about the sea.",
                 "Explain in detail how a steam engine works.",
                 "Tell a long story about a lighthouse keeper.",
                 "Describe the history of the printing press at length."]


def _local(tmp: Path, cap: int, total: int) -> tuple[dict[str, str], int]:
    """Texts by id and completion tokens reported, for one run against llama-server."""
    where = tmp / f"cap{cap}"
    where.mkdir()
    job = where / "job.yaml"
    run: dict[str, object] = {"concurrency": 1, "guard": {"repetition": False}}
    if cap < total:
        run.update(on_length="continue", max_total_tokens=total, max_continuations=100)
    job.write_text(json.dumps({
        "name": "p14", "output_dir": str(where / "out"), "endpoint": "local",
        "defaults": {"max_tokens": cap, "temperature": 0, "seed": 1}, "run": run,
        "prompts": [{"id": f"q{i}", "prompt": p} for i, p in enumerate(LOCAL_PROMPTS)]}))
    done = measure("batchgen", "run", str(job), "-q")
    assert done.code == 0, f"llama-server run exited {done.code}"
    results = [json.loads(line) for line in
               (where / "out" / "p14" / "results.jsonl").read_text().splitlines()]
    return ({r["id"]: r["content"] for r in results},
            sum(r["usage"]["completion_tokens"] for r in results))


def _local_runs(quick: bool) -> list[str]:
    from batchgen.llama.server import check

    name = "P14 llama-server, temperature 0: capped and continued (prefill) vs whole"
    if quick:
        return [row(name, "full mode only", "report", None)]
    found = check()
    if found.server is None or found.model is None:
        return [row(name, "skipped: llama-server / model not installed", "report", None)]
    total, cap = 384, 48
    with tempfile.TemporaryDirectory() as tmp:
        whole, needed = _local(Path(tmp), total, total)
        capped, sent = _local(Path(tmp), cap, total)
    same = sum(capped[k] == whole[k] for k in whole)
    waste = sent / needed
    return [row(name, f"{same}/{len(whole)} answers byte-identical at a cap of {cap} "
                f"(to {total} tokens); tokens sent / needed **{waste:.3f}** "
                f"({sent:,} / {needed:,})", "identical, ≤ 1.02",
                same == len(whole) and waste <= 1.02)]


def run(quick: bool) -> list[str]:
    return _fake_run(quick) + _local_runs(quick)


def _fake_run(quick: bool) -> list[str]:
    length, cap = (8_000, 1_000) if quick else (40_000, 4_000)
    prompt = f"[[len={length}]] a long report"
    with fake_server() as server, tempfile.TemporaryDirectory() as tmp:
        job = Path(tmp) / "p14.yaml"
        job.write_text(json.dumps({
            "name": "p14", "output_dir": f"{tmp}/out",
            "endpoint": {"base_url": server.base_url, "api_key_env": KEY_ENV,
                         "continuation": "partial"},
            "defaults": {"model": "qwen-plus", "max_tokens": cap},
            "run": {"on_length": "continue", "max_continuations": 100},
            "prompts": [{"id": "doc", "prompt": prompt}]}))
        done = measure("batchgen", "run", str(job), "-q")
        sent = sum(e["completion_tokens"] for e in server.control("ledger")["entries"])
        text = (Path(tmp) / "out" / "p14" / "texts" / "doc.md").read_text(encoding="utf-8")
    body = {"model": "qwen-plus", "messages": [{"role": "user", "content": prompt}]}
    same = text == "".join(plan_for(body, 1, Config()).tokens)
    waste = sent / length
    return [row(f"P14 one answer of {length:,} tokens at a cap of {cap:,} a call "
                "(run.on_length: continue, partial mode)",
                f"exit {done.code}; text {'byte-identical' if same else 'DIFFERENT'}; "
                f"tokens sent / needed **{waste:.3f}** ({sent:,} / {length:,}); "
                f"{done.wall:.1f} s",
                "identical, ≤ 1.02", done.code == 0 and same and waste <= 1.02)]
