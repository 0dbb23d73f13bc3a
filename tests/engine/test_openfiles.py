"""The open-file limit: each stream holds a socket, so a run raises its soft
limit as far as the hard one allows, and runs as many streams as fit beyond."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

from batchgen.testing.fakeserver import FakeServer
from tests.helpers import ROOT, read_results, write_job

FIT = ("import json, resource; from batchgen.engine.openfiles import fit_concurrency; "
       "print(json.dumps([fit_concurrency(300), resource.getrlimit(resource.RLIMIT_NOFILE)[0]]))")


def limited(soft: int, hard: int, *args: str) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` with ``ulimit -S -n SOFT; ulimit -H -n HARD``."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], env=env, preexec_fn=limit,
                          capture_output=True, text=True, check=False, timeout=120)


def test_the_soft_limit_is_raised_and_what_does_not_fit_is_said() -> None:
    raised = limited(256, 2048, "-c", FIT)
    assert json.loads(raised.stdout) == [[300, None], 364]  # 300 streams + 64 spare
    capped = limited(256, 256, "-c", FIT)
    (fits, note), soft = json.loads(capped.stdout)
    assert (fits, soft) == (192, 256)
    assert note.startswith("run.concurrency 300 lowered to 192") and "ulimit -n 364" in note


def test_more_streams_than_open_files_run_without_a_failure(tmp_path: Path,
                                                           fake: FakeServer) -> None:
    """300 streams at once under a limit of 256 files: every request done, none
    failed for a missing file descriptor, and the run says why it ran fewer."""
    job = write_job(tmp_path / "job.yaml", fake,
                    [{"id": f"p{i}", "prompt": f"[[len=8]][[delay=0.05]] q {i}"}
                     for i in range(300)], run={"concurrency": 300})
    proc = limited(256, 256, "-m", "batchgen", "run", str(job), "-q")
    assert proc.returncode == 0, proc.stderr
    assert "run.concurrency 300 lowered to 192" in proc.stdout + proc.stderr
    assert len(read_results(tmp_path / "out" / "t")) == 300
