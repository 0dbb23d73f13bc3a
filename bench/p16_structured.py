"""P16: answers to a schema — invalid ones asked again and priced to the token,
and what checking costs.

- 1,000 answers (quick: 200), a fifth invalid on their first attempt (JSON
  that breaks the schema): all valid at the end, and the report's "invalid
  answers" line equals, to the token, what the fake's billing ledger says
  those attempts cost.
- Validation's share of a run's CPU at 1,000 answers of ~2 KB: parsing and
  checking each answer (timed in process over the run's own texts) against
  the CPU of the whole run (medians of 3); and, to report, the whole run with
  a schema against the same run without one.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from batchgen.engine.structured import AnswerCheck
from bench.common import KEY_ENV, fake_server, measure, row

PERSON = {"type": "object",
          "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                         "tags": {"type": "array", "items": {"type": "string"}}},
          "required": ["name", "age", "tags"], "additionalProperties": False}
CPU_TARGET = 1.05


def write_job(here: Path, name: str, base_url: str, n: int, schema: bool,
              invalid_every: int = 0) -> Path:
    prompts = []
    for i in range(n):
        kinds = "violate,valid" if invalid_every and i % invalid_every == 0 else "valid"
        prompts.append({"id": f"r{i}", "prompt": f"[[json={kinds}]] [[len=400]] person {i}"})
    job = {"name": name, "output_dir": str(here / "out"),
           "endpoint": {"base_url": base_url, "api_key_env": KEY_ENV},
           "defaults": {"model": "qwen-plus", "max_tokens": 2000,
                        **({"schema": PERSON} if schema else {})},
           "pricing": {"qwen-plus": {"currency": "CNY", "input": 0.8, "output": 2.0}},
           "run": {"concurrency": 32}, "prompts": prompts}
    path = here / f"{name}.json.yaml"
    path.write_text(json.dumps(job), encoding="utf-8")
    return path


def run(quick: bool) -> list[str]:
    n = 200 if quick else 1_000
    rows = []
    with fake_server() as server, tempfile.TemporaryDirectory() as tmp:
        here = Path(tmp)
        job = write_job(here, "invalid", server.base_url, n, True, invalid_every=5)
        done = measure("batchgen", "run", str(job), "-q")
        report = json.loads((here / "out" / "invalid" / "report.json").read_text())
        [line] = [a for a in report["apart"] if a["kind"] == "invalid answers"]
        entries = server.control("ledger")["entries"]
        asked_again = {e["key"] for e in entries if e["attempt"] == 2}
        billed = [e for e in entries if e["attempt"] == 1 and e["key"] in asked_again]
        ledger = (len(billed), sum(e["prompt_tokens"] for e in billed),
                  sum(e["completion_tokens"] for e in billed))
        ours = (line["attempts"], line["prompt_tokens"], line["completion_tokens"])
        valid = sum(1 for _ in (here / "out" / "invalid" / "results.jsonl").open())
        rows.append(row(f"P16 {n:,} answers, a fifth invalid at first: the report's invalid "
                        "line against the server's ledger",
                        f"exit {done.code}; {valid:,} valid; invalid line {ours[0]} attempts, "
                        f"{ours[1]:,} + {ours[2]:,} tokens; ledger {ledger[0]}, "
                        f"{ledger[1]:,} + {ledger[2]:,}",
                        "all valid; equal to the token",
                        done.code == 0 and valid == n and ours == ledger))
        cpu: dict[bool, list[float]] = {True: [], False: []}
        for i in range(3):
            for schema in (False, True):
                name = f"cpu{i}{'s' if schema else ''}"
                measured = measure("batchgen", "run",
                                   str(write_job(here, name, server.base_url, n, schema)), "-q")
                assert measured.code == 0, measured
                cpu[schema].append(measured.cpu)
        texts = [p.read_text(encoding="utf-8")
                 for p in sorted((here / "out" / "cpu0s" / "texts").glob("*.md"))]
        on, off = statistics.median(cpu[True]), statistics.median(cpu[False])
        check = AnswerCheck(PERSON)
        t0 = time.process_time()
        for _ in range(5):
            assert all(check.problem(t) is None for t in texts)
        checking = (time.process_time() - t0) / 5
        size = statistics.mean(len(t.encode()) for t in texts)
        rows.append(row(f"P16 validation's CPU in a run of {n:,} answers of {size:,.0f} bytes "
                        "(parse and check each, in process, against the run's CPU)",
                        f"{checking * 1000:.1f} ms of {on:.2f} s = **{checking / on:.2%}**",
                        f"≤ {CPU_TARGET - 1:.0%}", checking / on <= CPU_TARGET - 1))
        rows.append(row(f"P16 a whole run of {n:,} answers with a schema vs without (medians "
                        "of 3; texts/<id>.json, the early-stop watch and the check in it)",
                        f"{on:.2f} s vs {off:.2f} s = {on / off:.3f}×", "report", None))
    return rows
