"""The fake API in a process of its own: it outlives a killed batchgen (tests),
and its CPU is not counted as batchgen's (benchmarks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]  # the repository (batchgen/testing/process.py)


class FakeProcess:
    """``python -m batchgen.testing.fakeserver --port PORT ARGS``, on a free port
    (``port=0``) or a given one (a server that comes back where it was).
    ``with FakeProcess(...) as server:`` stops it after; so does :meth:`stop`."""

    def __init__(self, *args: str, path: str = "/compatible-mode/v1", port: int = 0) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "batchgen.testing.fakeserver", "--port", str(port), *args],
            stdout=subprocess.PIPE, text=True, env=env,
        )
        if self.proc.stdout is None:
            raise RuntimeError("the fake server's stdout is not a pipe")
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"the fake server did not start: {line!r}")
        self.port = int(line.split()[1])
        self.base_url = f"http://127.0.0.1:{self.port}{path}"

    def control(self, what: str, payload: dict[str, Any] | None = None) -> Any:
        """GET (or, with a payload, POST) the fake's ``/_control/WHAT``."""
        url = f"http://127.0.0.1:{self.port}/_control/{what}"
        data = json.dumps(payload).encode() if payload is not None else None
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback
        with direct.open(urllib.request.Request(url, data=data)) as resp:
            return json.loads(resp.read())

    def get(self, what: str) -> Any:
        return self.control(what)

    def cpu(self) -> float:
        """CPU seconds the fake server has used."""
        return float(self.control("stats")["cpu"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def __enter__(self) -> FakeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
