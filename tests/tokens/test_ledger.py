"""Cost truth: estimated figures as exact as can be known, and saying how."""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from batchgen import load_job, run_job
from batchgen.cost.pricing import ModelPrice, Tier
from batchgen.engine.budget import worst_case
from batchgen.engine.runner import RunOptions
from batchgen.outputs.report import build_report, render
from batchgen.testing.fakeserver import FakeServer
from batchgen.tokens.estimator import Calibration, Estimator
from batchgen.tokens.tokenizers import qwen_counter, vocab_path
from tests.helpers import ROOT, no_sleep, write_job

REQUIRE = __import__("os").environ.get("BATCHGEN_REQUIRE_LOCAL") == "1"
needs_qwen = pytest.mark.skipif(
    not REQUIRE and (vocab_path() is None or importlib.util.find_spec("tiktoken") is None),
    reason="Qwen's tokenizer not installed (pip install tiktoken && pip install --no-deps "
           "dashscope)")


def run(tmp_path: Path, fake: FakeServer, prompts: list[dict[str, Any]], **extra: Any) -> Path:
    job = write_job(tmp_path / "job.yaml", fake, prompts, **extra)
    run_job(load_job(job), RunOptions(sleep=no_sleep, flush_interval=0.05))
    return tmp_path / "out" / "t"


def usage_rows(run_dir: Path) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(run_dir / "run.db")
    return db.execute(
        "SELECT a.request_id, a.status, u.prompt_tokens, u.completion_tokens, u.prompt_method, "
        "u.completion_method FROM attempts a JOIN usage u ON u.attempt_id = a.id "
        "ORDER BY a.id").fetchall()


def billed(fake: FakeServer) -> int:
    return sum(e["prompt_tokens"] + e["completion_tokens"] for e in fake.ledger.entries)


def test_an_aborted_attempts_prompt_is_derived_from_the_report_of_its_retry(
    tmp_path: Path, fake: FakeServer
) -> None:
    prompts = [{"id": f"c{i}", "model": "fake-model",
                "prompt": f"[[len=60]] [[faults=cut@30]] a question of some length {i} " * 3}
               for i in range(2)]
    run_dir = run(tmp_path, fake, prompts)
    cut = [e for e in fake.ledger.entries if not e["complete"]]
    rows = [r for r in usage_rows(run_dir) if r[1] == "error"]
    assert len(rows) == len(cut) == 2
    for row, entry in zip(rows, cut, strict=True):
        assert row[4] == "derived" and row[2] == entry["prompt_tokens"]  # the server's figure
    report = json.loads((run_dir / "report.json").read_text())
    (model_row,) = report["rows"]
    assert model_row["tokens_by_method"]["derived"] == sum(e["prompt_tokens"] for e in cut)


def test_calibration_learned_from_finished_requests_is_kept_in_the_store(
    tmp_path: Path, fake: FakeServer
) -> None:
    prompts = [{"id": f"f{i}", "model": "fake-model", "prompt": f"[[len=50]] warm-up {i}"}
               for i in range(5)]
    prompts += [{"id": "cut", "model": "fake-model",
                 "prompt": "[[len=400]] [[faults=cut@300]] the long one"}]
    run_dir = run(tmp_path, fake, prompts, run={"concurrency": 1})
    (row,) = [r for r in usage_rows(run_dir) if r[1] == "error"]
    assert row[5] == "calibrated"
    assert abs(row[3] - 300) / 300 <= 0.05, row  # the text received: 300 of the fake's tokens
    db = sqlite3.connect(run_dir / "run.db")
    assert db.execute("SELECT samples FROM calibration WHERE model='fake-model' AND "
                      "direction='content'").fetchone()[0] == 6  # every finished one
    first = build_report([run_dir]).to_json()["rows"]
    assert build_report([run_dir]).to_json()["rows"] == first  # the same figures later
    assert "calibrated" in render(build_report([run_dir]), "md")


def test_report_totals_of_a_cut_job_are_within_5_percent_of_the_ledger(
    tmp_path: Path, fake: FakeServer
) -> None:
    prompts = [{"id": f"p{i}", "model": "fake-model",
                "prompt": f"[[len={100 + 10 * i}]] essay {i}" + (
                    f" [[faults=cut@{40 + i}]]" if i % 2 else "")} for i in range(10)]
    run_dir = run(tmp_path, fake, prompts)
    report = build_report([run_dir])
    (row,) = report.rows
    ours = row.prompt_tokens + row.completion_tokens
    assert abs(ours - billed(fake)) / billed(fake) <= 0.05, (ours, billed(fake))


@needs_qwen
def test_qwen_tokenizer_counts_as_dashscopes_own() -> None:
    # dashscope's tokenizer module, loaded from the installed package (its
    # package __init__ needs dependencies batchgen does not install)
    vocab = vocab_path()
    assert vocab is not None
    folder = vocab.parent.parent / "tokenizers"
    pkg = types.ModuleType("ds_tokenizers")
    pkg.__path__ = [str(folder)]
    sys.modules["ds_tokenizers"] = pkg
    for name in ("tokenizer_base", "qwen_tokenizer"):
        spec = importlib.util.spec_from_file_location(f"ds_tokenizers.{name}",
                                                      folder / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[f"ds_tokenizers.{name}"] = module
        spec.loader.exec_module(module)
    reference = sys.modules["ds_tokenizers.qwen_tokenizer"].QwenTokenizer(str(vocab))
    ours = qwen_counter()
    assert ours is not None
    root = ROOT
    engine = root / "batchgen" / "engine" / "engine.py"
    texts = [(root / "README.md").read_text(), engine.read_text(),
             "流式输出可以避免长文本生成时的服务器超时。" * 40,
             "Mixed 中文 text, 123 456.\n\n  \t x",
             "e\u0301t\u00e9 caf\u00e9 na\u00efve"]
    for text in texts:
        assert ours.count(text) == len(reference.encode(text)), text[:40]


@needs_qwen
def test_qwen_models_are_counted_with_the_tokenizer(tmp_path: Path, fake: FakeServer) -> None:
    run_dir = run(tmp_path, fake, [{"id": "q", "prompt": "[[len=200]] [[faults=nousage]] 写文章"}])
    ((_, _, _, completion, _, how),) = usage_rows(run_dir)
    assert how == "tokenizer"
    assert abs(completion - 200) <= 200 * 0.03  # the fake's Chinese words are Qwen tokens


def test_the_budget_and_reservations_use_the_same_estimator() -> None:
    price = ModelPrice("m", "USD", (Tier(None, 1.0, 1.0),))
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 4000}],
            "max_tokens": 10}
    plain = worst_case(price, body)
    calibration = Calibration()
    for _ in range(3):
        calibration.fit("m", "prompt").add(1000, 2000)  # the server counts twice as many
    doubled = worst_case(price, body, Estimator(calibration))
    assert doubled == pytest.approx((plain * 1e6 - 10) * 2 / 1e6 + 10 / 1e6, rel=0.01)
