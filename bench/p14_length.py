"""P14: a document longer than the model's output cap, continued (run.on_length).

One answer of 40,000 tokens from an endpoint whose per-call cap is 4,000
(``max_tokens: 4000``), against the fake API in partial (Model Studio) mode:
the text must be byte-identical to what the fake generates uninterrupted, and
the waste — completion tokens the server sent over those needed — ≤ 1.02.
Quick mode: 8,000 tokens at a cap of 1,000.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from batchgen.testing.fakeserver import Config, plan_for
from bench.common import KEY_ENV, fake_server, measure, row


def run(quick: bool) -> list[str]:
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
