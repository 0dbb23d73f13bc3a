"""The local endpoint's plumbing that needs no model: commands, stale servers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from batchgen.local import PID_FILE, cleanup_stale, server_command


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
