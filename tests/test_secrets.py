"""A canary key goes through every path; it must never come out anywhere."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from batchgen.jobs.endpoints import key_elsewhere
from batchgen.jobs.load import Overrides, load_job
from batchgen.secrets import Redactor
from batchgen.testing.fakeserver import FakeServer
from batchgen.testing.process import FakeProcess
from tests.helpers import CANARY, read_results, run_cli, write_job


def all_bytes_under(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())


def test_canary_key_never_leaves_the_process(tmp_path: Path, fake_process: FakeProcess) -> None:
    prompts = [
        {"id": "ok", "prompt": "[[len=8]] fine"},
        {"id": "retried", "prompt": "[[len=8]] [[faults=500,cut@2,ok]] x"},
        {"id": "bad", "prompt": "[[faults=400]] refused"},
        {"id": "echo", "prompt": "[[faults=errevent@1,401]] echoes the key"},
    ]
    job = write_job(tmp_path / "job.yaml", None, prompts, run={"concurrency": 1})
    job.write_text(job.read_text().replace("https://example.invalid/v1", fake_process.base_url))
    outputs = []
    first = run_cli("run", str(job), "--verbose", "--progress", "lines")
    outputs.append(first)
    assert first.returncode == 4, first.stderr  # the 401 stopped the run...
    assert "Incorrect API key provided: ***" in first.stderr  # ...and its echo was scrubbed
    run_dir = tmp_path / "out" / "t"
    outputs.append(run_cli("status", str(run_dir)))
    outputs.append(run_cli("validate", str(job)))
    # a crash: the run store is unreadable
    (tmp_path / "broken" / "t").mkdir(parents=True)
    (tmp_path / "broken" / "t" / "run.db").write_bytes(b"not a database" * 100)
    crash = run_cli("run", str(job), "--out", str(tmp_path / "broken"), "--verbose")
    assert crash.returncode != 0
    outputs.append(crash)
    text = "".join(o.stdout + o.stderr for o in outputs)
    assert CANARY not in text
    assert CANARY.encode() not in all_bytes_under(tmp_path)
    assert {r["id"] for r in read_results(run_dir)} >= {"ok"}
    db = sqlite3.connect(run_dir / "run.db")
    messages = [m for (m,) in db.execute("SELECT error_message FROM attempts") if m]
    assert any("***" in m for m in messages)


def test_redactor() -> None:
    redact = Redactor("sk-secret-value-1234", None, "")
    assert redact("key sk-secret-value-1234 here") == "key *** here"
    assert "sk-secret" not in repr(redact)


PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY",
              "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


def _elsewhere_job(tmp_path: Path) -> Path:
    """A job file from someone else: its own server, the default key variable."""
    job = tmp_path / "theirs.yaml"
    job.write_text(f"name: t\noutput_dir: {tmp_path / 'out'}\nendpoint:\n  base_url: http://api.elsewhere.test/v1\n"
                   "  allow_http: true\ndefaults: {model: qwen-plus}\n"
                   "prompts:\n  - {id: a, prompt: '[[len=4]] hi'}\n", encoding="utf-8")
    return job


def test_a_job_file_cannot_send_the_model_studio_key_to_a_host_it_names(
        tmp_path: Path, fake: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # the fake server stands as an HTTP proxy: what reached "api.elsewhere.test" is seen
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    env = {"DASHSCOPE_API_KEY": CANARY, "http_proxy": f"http://127.0.0.1:{fake.port}"}
    job = _elsewhere_job(tmp_path)

    checked = run_cli("validate", str(job), env=env)
    assert checked.returncode == 0, checked.stderr
    assert "DASHSCOPE_API_KEY holds a Model Studio key" in checked.stdout
    assert "--allow-key-env DASHSCOPE_API_KEY" in checked.stdout

    kept = run_cli("run", str(job), env=env)
    assert kept.returncode == 4, kept.stderr  # the server wanted a key: a 401 stops the run
    assert "is not sent there" in kept.stdout
    assert fake.ledger.requests == 1 and CANARY not in fake.ledger.keys_seen

    # the user's own choice sends it: --allow-key-env (or --api-key-env, --base-url)
    sent = run_cli("run", str(job), "--allow-key-env", "DASHSCOPE_API_KEY", env=env)
    assert sent.returncode == 0, sent.stderr
    assert "is not sent there" not in sent.stdout
    assert CANARY in fake.ledger.keys_seen
    assert [r["id"] for r in read_results(tmp_path / "out" / "t")] == ["a"]


def test_where_a_provider_key_goes() -> None:
    assert key_elsewhere("DASHSCOPE_API_KEY", "https://dashscope.aliyuncs.com/compatible-mode/v1") \
        is None
    assert key_elsewhere("DASHSCOPE_API_KEY", "https://dashscope-intl.aliyuncs.com/v1") is None
    assert key_elsewhere("DASHSCOPE_API_KEY", "https://ws-1.cn-beijing.maas.aliyuncs.com/v1") \
        is None
    assert key_elsewhere("DASHSCOPE_API_KEY", "https://evilaliyuncs.com/v1") == "Model Studio"
    assert key_elsewhere("DASHSCOPE_API_KEY", "http://127.0.0.1:8000/v1") is None  # the user's own
    assert key_elsewhere("DASHSCOPE_API_KEY", "http://localhost/v1") is None
    assert key_elsewhere("DASHSCOPE_API_KEY", "https://dashscope.aliyuncs.com.evil.test/v1") \
        == "Model Studio"
    assert key_elsewhere("OPENAI_API_KEY", "https://api.openai.com/v1") is None
    assert key_elsewhere("OPENAI_API_KEY", "https://openrouter.ai/api/v1") == "OpenAI"
    assert key_elsewhere("GATEWAY_API_KEY", "https://gw.example/v1") is None  # named for it


def test_the_user_chooses_where_the_key_goes(tmp_path: Path) -> None:
    job = _elsewhere_job(tmp_path)
    assert load_job(job, Overrides()).endpoint.key_withheld == ("DASHSCOPE_API_KEY",
                                                                "Model Studio")
    assert load_job(job, Overrides()).endpoint.api_key_env is None
    for chosen in (Overrides(api_key_env="DASHSCOPE_API_KEY"),
                   Overrides(base_url="http://api.elsewhere.test/v1", allow_http=True),
                   Overrides(allowed_key_envs=("DASHSCOPE_API_KEY",))):
        endpoint = load_job(job, chosen).endpoint
        assert (endpoint.api_key_env, endpoint.key_withheld) == ("DASHSCOPE_API_KEY", None)
    # a variable named for the endpoint goes there
    job.write_text(job.read_text().replace("allow_http: true",
                                           "allow_http: true\n  api_key_env: ELSEWHERE_API_KEY"))
    assert load_job(job, Overrides()).endpoint.api_key_env == "ELSEWHERE_API_KEY"
