"""The ``batchgen`` command's way out: the command's exit code, everything it
printed and wrote, and no interpreter teardown after it (batchgen.cli.entry)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from batchgen.testing.fakeserver import FakeServer
from tests.helpers import ROOT, read_results, run_cli, write_job


def entry_with_atexit(marker: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``batchgen ARGS`` through ``entry()``, with an atexit handler that writes
    ``marker`` — which only Python's own teardown would run."""
    code = ("import atexit, pathlib, sys\n"
            "atexit.register(pathlib.Path(sys.argv[1]).write_text, 'teardown ran')\n"
            "sys.argv = ['batchgen', *sys.argv[2:]]\n"
            "from batchgen.cli import entry\n"
            "entry()\n")
    return subprocess.run([sys.executable, "-c", code, str(marker), *args], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120,
                          check=False)


def test_a_command_exits_with_its_code_and_all_it_printed(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    shown = entry_with_atexit(marker, "--help")
    assert shown.returncode == 0
    # the whole text, as the normal way out prints it
    assert shown.stdout.startswith("Usage: ") and "validate" in shown.stdout
    assert shown.stdout.rstrip().endswith(
        subprocess.run([sys.executable, "-m", "batchgen", "--help"], capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                       check=False).stdout.rstrip().splitlines()[-1])
    assert not marker.exists()  # no teardown after the command

    bad = tmp_path / "bad.yaml"
    bad.write_text("prompts: [\n", encoding="utf-8")
    refused = entry_with_atexit(marker, "validate", str(bad))
    assert refused.returncode == 2
    assert "bad.yaml" in refused.stderr and refused.stdout == ""
    assert not marker.exists()


def test_a_run_has_written_and_closed_everything_when_the_process_ends(
        tmp_path: Path, fake: FakeServer) -> None:
    job = write_job(tmp_path / "job.yaml", fake, [
        {"id": f"r{i}", "prompt": f"[[len=30]] answer {i}"} for i in range(20)])
    done = run_cli("run", str(job), timeout=120)
    assert done.returncode == 0, done.stderr
    assert "20 done" in done.stdout + done.stderr
    run_dir = tmp_path / "out" / "t"
    results = read_results(run_dir)
    assert [r["id"] for r in results] == [f"r{i}" for i in range(20)]
    for r in results:
        assert (run_dir / "texts" / f"{r['id']}.md").read_text(encoding="utf-8") == r["content"]
    assert (run_dir / "report.html").read_text(encoding="utf-8").rstrip().endswith("</html>")
    assert json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    assert not list(run_dir.glob(".*.tmp")) and not list((run_dir / "texts").glob(".*.tmp"))
    # the store was closed, not abandoned: its WAL is checkpointed into run.db
    db = sqlite3.connect(f"file:{run_dir / 'run.db'}?mode=ro", uri=True)
    try:
        assert db.execute("SELECT COUNT(*) FROM requests WHERE state='done'").fetchone() == (20,)
    finally:
        db.close()
    wal = run_dir / "run.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0


def test_a_command_runs_with_the_garbage_collector_tuned_for_many_requests() -> None:
    code = ("import gc, json, sys\n"
            "import batchgen.cli as cli\n"
            "def show() -> None:\n"
            "    print(json.dumps(gc.get_threshold()))\n"
            "    sys.exit(0)\n"
            "cli.main = show\n"
            "cli.entry()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    from batchgen.cli import GC_THRESHOLDS

    assert tuple(json.loads(done.stdout)) == GC_THRESHOLDS
    assert GC_THRESHOLDS[0] > 700  # fewer collections than Python's default


def imported_by(*args: str, cwd: Path) -> list[str]:
    """The modules ``python -X importtime -m batchgen ARGS`` imported."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "batchgen", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    return [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()
            if line.startswith("import time:")]


def test_start_up_imports_neither_jinja2_without_a_template_nor_tenacity_before_a_retry(
        tmp_path: Path, fake: FakeServer) -> None:
    """Jinja2 reads a job only when it has a ``template:`` (the report imports
    it later, on a thread of its own); tenacity comes with a request's first
    transient error (engine.Engine._attempts). Together, a one-request run's first
    request went out ~35 ms sooner (bench/README.md)."""
    def tops(modules: list[str]) -> set[str]:
        return {m.split(".")[0] for m in modules}

    plain = write_job(tmp_path / "plain.yaml", fake, [{"id": "a", "prompt": "hi"}])
    (tmp_path / "rows.csv").write_text("text\nhello\n", encoding="utf-8")
    rows = write_job(tmp_path / "rows.yaml", fake, [], data="rows.csv",
                     template={"prompt": "say {{ text }}"})
    checked = tops(imported_by("validate", str(plain), cwd=tmp_path))
    assert "pydantic_core" in checked  # the job was read and checked
    assert "jinja2" not in checked and "tenacity" not in checked
    assert "jinja2" in tops(imported_by("validate", str(rows), cwd=tmp_path))
    ran = imported_by("run", str(plain), "-q", cwd=tmp_path)
    assert "aiohttp" in tops(ran) and "tenacity" not in tops(ran)  # nothing was retried
