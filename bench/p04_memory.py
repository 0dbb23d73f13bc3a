"""P4: peak RSS of the whole `batchgen run` process as the job grows.

Each run is its own process against a fast fake server; peak RSS comes from
the kernel (wait4's ru_maxrss), so start-up, loading, streaming and the
reports are all in it.

- YAML: 1,000 and 10,000 (quick: 4,000) inline prompts (a YAML job is read an item at a
  time; it once was one document tree). Baseline: the 1k YAML job.
- JSONL: 1k, 10k and 100k (quick: none), run to the end; kept for P5 (quick:
  the YAML runs).
- JSONL of 1,000,000 prompts (20,000 in quick mode): loaded, planned into
  the store, then streamed until 2,000 (quick: 1,000) requests were answered,
  and stopped
  with SIGINT as a user would (the run then writes its reports for the whole
  job). Peak RSS over all of it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from batchgen.testing.process import FakeProcess as Server
from bench.common import KEY_ENV, ROOT, fake_server, row, write_jsonl

FINISHED: dict[int, tuple[Path, Path, str]] = {}  # size -> (job file, out root, base url)
_KEEP: list[tempfile.TemporaryDirectory[str]] = []
YAML_TARGET = 1.15
HUGE_TARGET_MB = 150


def run_process(args: list[str], stop_after: tuple[Server, int] | None = None
                ) -> tuple[int, float, float]:
    """(exit code, peak RSS in MB, wall seconds) of `python -m batchgen ...`;
    with ``stop_after=(server, n)``, SIGINT once the server has answered n."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "batchgen", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if stop_after is not None:
        server, n = stop_after
        start = server.control("stats")["requests"]
        while proc.poll() is None and server.control("stats")["requests"] - start < n:
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
    assert proc.stderr is not None
    err = proc.stderr.read()  # never let a full pipe stall the run
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0 and stop_after is None:
        print(err.decode()[-2000:], file=sys.stderr)
    return code, usage.ru_maxrss / 1024, wall


def sizes(quick: bool) -> tuple[int, ...]:
    return () if quick else (1_000, 10_000, 100_000)


def write_yaml(path: Path, n: int, tokens: int) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        fh.write("defaults:\n  max_tokens: 64\nprompts:\n")
        for i in range(n):
            fh.write(f"  - id: r{i}\n    prompt: \"[[len={tokens}]] request {i}\"\n")
    return path


def _flags(server: Server, out: Path) -> list[str]:
    return ["--model", "qwen-plus", "--base-url", server.base_url, "--api-key-env", KEY_ENV,
            "--out", str(out), "--concurrency", "64", "-q"]


def run(quick: bool) -> list[str]:
    rows = []
    tmp = tempfile.TemporaryDirectory()
    _KEEP.append(tmp)
    here = Path(tmp.name)
    with fake_server("--len", "8") as server:
        yaml_rss: dict[int, float] = {}
        small, large = 1_000, 4_000 if quick else 10_000
        for n in (small, large):
            jobfile = write_yaml(here / f"p4_{n}.yaml", n, 8)
            out = here / f"yout{n}"
            code, rss, wall = run_process(["run", str(jobfile), *_flags(server, out)])
            assert code == 0, f"P4 YAML run of {n} exited {code}"
            yaml_rss[n] = rss
            if quick:  # P5's finished run; full mode leaves it the 100k JSONL one
                FINISHED[n] = (jobfile, out, server.base_url)
        ratio = yaml_rss[large] / yaml_rss[small]
        rows.append(row(f"P4 peak RSS, {large:,}-prompt YAML job vs a {small:,}-prompt one",
                        f"{yaml_rss[large]:.0f} MB vs {yaml_rss[small]:.0f} MB = "
                        f"**{ratio:.2f}×**", f"≤ {YAML_TARGET}×", ratio <= YAML_TARGET))

        base_rss = yaml_rss[small] if quick else None
        for n in sizes(quick):
            jobfile = write_jsonl(here / f"p4_{n}.jsonl", n, 8)
            out = here / "out"
            code, rss, wall = run_process(["run", str(jobfile), *_flags(server, out)])
            assert code == 0, f"P4 run of {n} exited {code}"
            FINISHED[n] = (jobfile, out, server.base_url)
            base_rss = base_rss or rss
            last = n == max(sizes(quick)) and n > 1_000
            ok = rss <= 1.3 * base_rss and rss <= 150 if last else None
            rows.append(row(f"P4 peak RSS, {n:,}-prompt JSONL job",
                            f"{rss:.0f} MB = **{rss / base_rss:.2f}×** the 1k job "
                            f"({n / wall:,.0f} requests/s)",
                            "≤ 1.3× and ≤ 150 MB at the largest" if last else "baseline"
                            if n == 1_000 else "report", ok))

        huge, stop = (20_000, 1_000) if quick else (1_000_000, 2_000)
        jobfile = write_jsonl(here / f"p4_huge_{huge}.jsonl", huge, 8)
        code, rss, wall = run_process(["run", str(jobfile), *_flags(server, here / "hout")],
                                      stop_after=(server, stop))
        assert code in (0, 130), f"P4 run of {huge:,} stopped with exit {code}"
        assert base_rss is not None
        rows.append(row(f"P4 peak RSS, {huge:,}-prompt JSONL job (loaded, planned, "
                        f"{stop:,} answered, then Ctrl-C and reports)",
                        f"{rss:.0f} MB = {rss / base_rss:.2f}× the 1k job"
                        f"{' (YAML)' if quick else ''}; {wall:.0f} s",
                        f"≤ {HUGE_TARGET_MB} MB", rss <= HUGE_TARGET_MB))
    return rows
