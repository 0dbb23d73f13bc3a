"""P15: data in, table out — memory and rendering speed of a job over rows.

- Peak RSS of a 1,000,000-row CSV job (quick: 100,000) against a 10,000-row
  one (quick: 2,000): a dry run of each (every row read, rendered and
  checked), and a run of each against the fake API stopped with SIGINT once
  2,000 rows (quick: 500) were answered — loading, planning, streaming, the
  table of every row and the reports are all in it.
- Rendering: rows rendered per second through the template alone, in
  process; and rows validated per second end to end (``batchgen validate``:
  read, rendered, validated, fingerprinted, ids checked) on one core, with
  the time of validating a one-row job (start-up) taken off.
"""

from __future__ import annotations

import csv
import tempfile
import time
from pathlib import Path

from bench.common import KEY_ENV, fake_server, measure, row
from bench.p04_memory import run_process

TEMPLATE = """\
name: {name}
endpoint: {{base_url: "{base_url}", api_key_env: {key}}}
defaults: {{model: qwen-plus, max_tokens: 64}}
data: {{path: {data}, id: doc_id}}
template:
  system: You translate into {{{{ lang }}}}.
  prompt: "[[len=8]] Translate into {{{{ lang }}}}: {{{{ text }}}}"
  tags: ["{{{{ lang }}}}"]
output:
  columns: [doc_id, lang]
"""
RSS_TARGET = 1.2
RATE_TARGET = 50_000


def write_data(path: Path, n: int) -> Path:
    langs = ("French", "German", "Japanese", "Spanish")
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["doc_id", "lang", "text"])
        for i in range(n):
            writer.writerow([f"d{i}", langs[i % 4],
                             f"Document {i}: the quick brown fox jumps over the lazy dog."])
    return path


def write_job(here: Path, n: int, base_url: str) -> Path:
    data = write_data(here / f"rows{n}.csv", n)
    job = here / f"job{n}.yaml"
    job.write_text(TEMPLATE.format(name=f"p15-{n}", base_url=base_url, key=KEY_ENV,
                                   data=data.name), encoding="utf-8")
    return job


def run(quick: bool) -> list[str]:
    small, large, stop = (2_000, 100_000, 500) if quick else (10_000, 1_000_000, 2_000)
    rows = []
    with fake_server("--len", "8") as server, tempfile.TemporaryDirectory() as tmp:
        here = Path(tmp)
        jobs = {n: write_job(here, n, server.base_url) for n in (1, small, large)}
        flags = ["--out", str(here / "out"), "--concurrency", "64", "-q"]
        dry = {n: run_process(["run", str(jobs[n]), "--dry-run", *flags])
               for n in (small, large)}
        assert all(code == 0 for code, _, _ in dry.values()), dry
        ratio = dry[large][1] / dry[small][1]
        rows.append(row(f"P15 peak RSS, dry run of a {large:,}-row CSV job vs {small:,} rows",
                        f"{dry[large][1]:.0f} MB vs {dry[small][1]:.0f} MB = **{ratio:.2f}×**",
                        f"≤ {RSS_TARGET}×", ratio <= RSS_TARGET))
        ran = {n: run_process(["run", str(jobs[n]), *flags], stop_after=(server, stop))
               for n in (small, large)}
        assert all(code in (0, 130) for code, _, _ in ran.values()), ran
        table = here / "out" / f"p15-{large}" / "table.csv"
        with table.open(encoding="utf-8") as fh:
            written = sum(1 for _ in csv.reader(fh)) - 1
        ratio = ran[large][1] / ran[small][1]
        rows.append(row(f"P15 peak RSS, run of a {large:,}-row CSV job vs {small:,} rows "
                        f"({stop:,} answered, then Ctrl-C; the table of every row)",
                        f"{ran[large][1]:.0f} MB vs {ran[small][1]:.0f} MB = **{ratio:.2f}×**; "
                        f"table rows {written:,}; {ran[large][2]:.0f} s",
                        f"≤ {RSS_TARGET}×", ratio <= RSS_TARGET and written == large))
        rows.append(_render_rate(here / f"rows{large}.csv"))
        start = min(_timed(jobs[1]) for _ in range(3))
        big = min(_timed(jobs[large]) for _ in range(1 if not quick else 2))
        rate = (large - 1) / (big - start)
        rows.append(row(f"P15 rows validated per second ({large:,}-row CSV, template of three "
                        "strings; start-up taken off)",
                        f"**{rate:,.0f} rows/s** ({big:.2f} s CPU vs {start:.2f} s for one row)",
                        f"≥ {RATE_TARGET:,}", rate >= RATE_TARGET))
    return rows


def _timed(job: Path) -> float:
    """CPU seconds (user + system) of validating ``job``, start-up included."""
    done = measure("batchgen", "validate", str(job))
    assert done.code == 0, done
    return done.cpu


def _render_rate(data: Path) -> str:
    """Rows a second through the template alone (the rows read first), in
    process, on one core: what rendering costs apart from validating."""
    from batchgen.jobs.templates import Template

    template = Template({"system": "You translate into {{ lang }}.",
                         "prompt": "[[len=8]] Translate into {{ lang }}: {{ text }}",
                         "tags": ["{{ lang }}"]}, "job.yaml", lambda _p: None)
    with data.open(encoding="utf-8", newline="") as fh:
        records = list(csv.DictReader(fh))[:200_000]
    t0 = time.process_time()
    for record in records:
        template.render(record)
    rate = len(records) / (time.process_time() - t0)
    return row(f"P15 rows rendered per second ({len(records):,} rows, the same template, in "
               "process)", f"**{rate:,.0f} rows/s**", f"≥ {RATE_TARGET:,}", rate >= RATE_TARGET)
