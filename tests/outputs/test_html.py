"""report.html: one self-contained page with the figures of report.json."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from batchgen import load_job, run_job
from batchgen.engine.runner import RunOptions
from batchgen.outputs import html
from batchgen.testing.fakeserver import FakeServer
from tests.helpers import CANARY, ROOT, no_sleep, read_results, run_cli, write_job

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def run_dir(tmp_path: Path, fake: FakeServer) -> Path:
    prompts = [{"id": f"r{i}", "model": ["qwen-plus", "qwen-max", "qwq-plus"][i % 3],
                "prompt": f"[[len={40 + i}]] essay {i}"
                + (" [[faults=cut@10]]" if i % 4 == 1 else "")
                + (" [[faults=404]]" if i == 6 else "")} for i in range(12)]
    job = write_job(tmp_path / "job.yaml", fake, prompts, endpoint={"region": "cn"})
    run_job(load_job(job), RunOptions(sleep=no_sleep, flush_interval=0.05))
    return tmp_path / "out" / "t"


class Cells(HTMLParser):
    """Every element carrying data-field/data-value, grouped by its table row."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, str]] = []
        self.methods: dict[str, str] = {}
        self.refs: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "tr" and "data-key" in a:
            self.rows.append({})
        if "data-field" in a and self.rows:
            self.rows[-1][str(a["data-field"])] = str(a.get("data-value") or "")
        if "data-method" in a:
            self.methods[str(a["data-method"])] = str(a["data-value"])
        for name in ("src", "href", "xlink:href", "action", "poster", "data"):
            if a.get(name):
                self.refs.append(f"{tag} {name}={a[name]}")


def parse(html: str) -> Cells:
    cells = Cells()
    cells.feed(html)
    return cells


def test_every_run_writes_report_html_with_the_figures_of_report_json(run_dir: Path) -> None:
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    report = json.loads((run_dir / "report.json").read_text())
    cells = parse(html)
    assert len(cells.rows) == len(report["rows"]) == 3
    for got, want in zip(cells.rows, report["rows"], strict=True):
        for field, value in want.items():
            if field == "tokens_by_method":
                continue
            shown = got[field]
            if value is None:
                assert shown == "", field
            elif isinstance(value, str):
                assert shown == value, field
            else:
                assert float(shown) == pytest.approx(value, rel=1e-12, abs=1e-12), field
    methods: dict[str, int] = {}
    for row in report["rows"]:
        for method, n in row["tokens_by_method"].items():
            methods[method] = methods.get(method, 0) + n
    assert {m: int(v) for m, v in cells.methods.items()} == methods
    for total in report["totals"]:
        assert f'data-total="{total["currency"]}" data-value="{total["cost"]}"' in html
    assert "r6" in html and "http_404" in html  # the failed request, with its class


def test_the_page_loads_nothing_from_anywhere(run_dir: Path) -> None:
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    cells = parse(html)
    assert cells.refs == []  # no src, href or xlink:href at all
    assert "link" not in cells.tags and "img" not in cells.tags and "iframe" not in cells.tags
    assert "<svg" in html and "<table" in html
    assert not re.search(r"url\(|@import|<script[^>]+src|@font-face", html, re.I)
    # the only URLs are SVG namespace names and the price lists' sources, as text
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", html))
    assert {u for u in urls if "w3.org" not in u and "aliyun.com" not in u} == set()
    assert CANARY not in html


def test_report_html_merges_run_dirs_and_prints_the_same_page(run_dir: Path, tmp_path: Path,
                                                                 fake: FakeServer) -> None:
    other = write_job(tmp_path / "o.yaml", fake, [{"id": "x", "prompt": "[[len=9]] other"}],
                      name="o", endpoint={"region": "cn"})
    run_job(load_job(other), RunOptions(sleep=no_sleep))
    merged = run_cli("report", str(run_dir), str(tmp_path / "out" / "o"), "--format", "html")
    assert merged.returncode == 0, merged.stderr
    rows = {r["key"]: r for r in parse(merged.stdout).rows}
    single = {r["key"]: r for r in parse((run_dir / "report.html").read_text()).rows}
    assert int(rows["qwen-plus"]["requests_done"]) == int(single["qwen-plus"]["requests_done"]) + 1


def test_the_markdown_report_goes_to_the_github_step_summary(tmp_path: Path,
                                                             fake: FakeServer) -> None:
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    job = write_job(tmp_path / "job.yaml", fake, [{"id": "a", "prompt": "x"}])
    proc = run_cli("run", str(job), "-q", env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert proc.returncode == 0, proc.stderr
    markdown = (tmp_path / "out" / "t" / "report.md").read_text()
    assert summary.read_text() == "earlier step\n" + markdown + "\n"
    # a later CI job finds the run finished: nothing is sent, its summary still shows the cost
    summary.write_text("")
    again = run_cli("run", str(job), "-q", env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert again.returncode == 0, again.stderr
    assert summary.read_text() == (tmp_path / "out" / "t" / "report.md").read_text() + "\n"
    assert fake.ledger.requests == 1
    # the variable naming a file not there (passed into a container without its
    # folder): the run was "stopped: cannot write to out/t" with exit 74; now a warning
    gone = str(tmp_path / "not-mounted" / "summary.md")
    job = write_job(tmp_path / "job.yaml", fake, [{"id": "a", "prompt": "x"},
                                                  {"id": "b", "prompt": "y"}])
    third = run_cli("run", str(job), env={"GITHUB_STEP_SUMMARY": gone})
    assert third.returncode == 0, third.stderr
    assert f"not added to GITHUB_STEP_SUMMARY ({gone}): No such file" in third.stderr
    assert [r["id"] for r in read_results(tmp_path / "out" / "t")] == ["a", "b"]


def test_a_deleted_report_html_is_written_again(tmp_path: Path, fake: FakeServer) -> None:
    job = write_job(tmp_path / "job.yaml", fake, [{"id": "a", "prompt": "x"}])
    assert run_cli("run", str(job), "-q").returncode == 0
    page = tmp_path / "out" / "t" / "report.html"
    page.unlink()
    assert run_cli("run", str(job), "-q").returncode == 0
    assert "<table" in page.read_text(encoding="utf-8")
    assert fake.ledger.requests == 1


def test_the_distributions_hold_a_bounded_uniform_sample() -> None:
    """Up to SAMPLE latencies are all kept; beyond, a uniform sample of SAMPLE."""
    rng = random.Random(0)
    few: list[float] = []
    for n in range(1, html.SAMPLE + 1):
        html._keep(few, float(n), rng, n)
    assert few == [float(n) for n in range(1, html.SAMPLE + 1)]
    many: list[float] = []
    total = 50 * html.SAMPLE
    for n in range(1, total + 1):
        html._keep(many, float(n), rng, n)
    assert len(many) == html.SAMPLE
    # uniform over 1..total: each tenth of the range holds about a tenth of the sample
    tenths = [sum(1 for v in many if k * total / 10 < v <= (k + 1) * total / 10)
              for k in range(10)]
    assert all(abs(t - html.SAMPLE / 10) < html.SAMPLE / 25 for t in tenths), tenths
    assert abs(statistics.median(many) - total / 2) < total / 25


def test_help_does_not_import_the_report_libraries() -> None:
    code = ("import sys, batchgen.cli; "
            "print(sorted(m for m in ('jinja2', 'pygal', 'openai') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == "[]"


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    if CHROMIUM is None:
        if os.environ.get("BATCHGEN_REQUIRE_LOCAL") == "1":
            raise RuntimeError("chromium is missing (CI installs Debian's chromium)")
        pytest.skip("headless chromium not installed")
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--hide-scrollbars", *args],
        capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("width", [1280, 390])
def test_headless_chromium_renders_the_table_and_charts(run_dir: Path, tmp_path: Path,
                                                        width: int) -> None:
    page = (run_dir / "report.html").as_uri()
    profile = tmp_path / f"profile-{width}"
    dom = chromium(f"--user-data-dir={profile}", f"--window-size={width},2000", "--dump-dom",
                   page)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert '<table class="sortable" id="rows">' in dom.stdout
    assert dom.stdout.count("<svg") >= 5  # cost, throughput, latency x2, outcomes, invocations
    assert 'aria-sort="none"' in dom.stdout  # the optional script ran
    shot = tmp_path / f"report-{width}.png"
    taken = chromium(f"--user-data-dir={profile}", f"--window-size={width},2400",
                     f"--screenshot={shot}", page)
    assert taken.returncode == 0, taken.stderr[-2000:]
    data: Any = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_reports_are_prepared_in_a_thread_and_a_failure_there_is_only_a_lost_head_start(
        monkeypatch: pytest.MonkeyPatch) -> None:
    code = ("import sys; from batchgen.outputs.files import prepare_reports\n"
            "assert 'pygal' not in sys.modules and 'jinja2' not in sys.modules\n"
            "prepare_reports().join(60)\n"
            "from batchgen.outputs import html as htmlreport\n"
            "print('pygal' in sys.modules, htmlreport._template.cache_info().currsize)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "1"]

    from batchgen.outputs import charts
    from batchgen.outputs import html as htmlreport

    def broken() -> None:
        raise RuntimeError("no pygal here")

    monkeypatch.setattr(charts, "prepare", broken)
    htmlreport.prepare()  # swallowed: writing the report reports it, if it persists


def _timeline_as_lists(start: float, finished: list[tuple[float, float]],
                       done: list[float]) -> list[tuple[float, float, int]]:
    """The timeline as first written, over lists: what the arrays must give."""
    from batchgen.outputs.html import BUCKETS

    recent = [(t, n) for t, n in finished if t >= start]
    if not recent:
        return []
    end = max(t for t, _ in recent)
    width = max((end - start) / BUCKETS, 1.0)
    count = min(BUCKETS, int((end - start) / width) + 1)
    rates = [0.0] * count
    for t, n in recent:
        rates[min(count - 1, int((t - start) / width))] += n / width
    done_at = sorted(t for t in done if t >= start)
    out, i = [], 0
    for b in range(count):
        edge = start + (b + 1) * width
        while i < len(done_at) and done_at[i] <= edge:
            i += 1
        out.append((start + b * width, rates[b], i))
    return out


def test_the_timeline_from_flat_arrays_is_the_timeline_from_lists() -> None:
    import random
    from array import array

    from batchgen.outputs.html import BUCKETS, Details, _timeline

    rng = random.Random(7)
    for case in range(400):
        start = rng.choice([0.0, 1_700_000_000.0, 1_764_000_123.456])
        span = rng.choice([0.3, 5.0, 39.9, 40.0, 1_000.0, 86_400.0])
        n = rng.randint(0, 60)
        ended = [start + rng.uniform(-span / 4, span) for _ in range(n)]
        width = max(span / BUCKETS, 1.0)
        # times exactly on slice edges, before the start and past the end
        ended += [start + k * width for k in range(rng.randint(0, 5))] + [start]
        tokens = [rng.choice([0, 1, 17, 4_000, 2.5]) for _ in ended]  # a REAL stored by hand
        done = [t for t in ended if rng.random() < 0.8] + [start + span * 2, start - 1.0]
        d = Details(latest=start if case % 5 else None, finished_at=array("d", ended),
                    finished_tokens=array("d", tokens), requests_done=array("d", done))
        expected = _timeline_as_lists(d.latest if d.latest is not None else 0.0,
                                      list(zip(ended, tokens, strict=True)), done)
        assert _timeline(d) == expected, case


def test_the_compiled_template_is_cached_and_a_cache_the_disk_refuses_fails_nothing(
        tmp_path: Path) -> None:
    """report.html's template compiled once for later runs (Jinja2's bytecode
    cache), the same page from the cache, and a cache that cannot be written
    (a full or read-only temp folder) is only a lost saving."""
    import jinja2

    from batchgen.outputs import html

    source = (ROOT / "batchgen" / "outputs" / "templates" / "report.html").read_text("utf-8")
    cache = html._bytecode_cache()
    assert cache is not None
    cache.directory = str(tmp_path / "cache")
    os.mkdir(cache.directory, 0o700)

    def environment() -> jinja2.Environment:
        return jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True,
                                  undefined=jinja2.StrictUndefined,
                                  loader=jinja2.DictLoader({"report.html": source}),
                                  bytecode_cache=cache)

    def compiled() -> jinja2.Template:
        return environment().get_template("report.html")

    first = compiled()
    assert len(os.listdir(cache.directory)) == 1  # written for the next run
    bucket = cache.get_bucket(environment(), "report.html", None, source)
    assert bucket.code is not None
    again = compiled()  # a new environment: from the cache, the same code
    assert again.root_render_func.__code__ == first.root_render_func.__code__
    changed = source.replace("</html>", "<!-- changed --></html>")
    assert cache.get_bucket(environment(), "report.html", None, changed).code is None
    cache.directory = str(tmp_path / "missing" / "folder")  # every write refused
    assert compiled().root_render_func.__code__ == first.root_render_func.__code__  # no failure
