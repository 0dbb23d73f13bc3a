"""P17: local media — memory of a job of many images, and encoding speed.

- Peak RSS of a job of 10,000 images of 200 KB (quick: 1,000) sent as
  ``file://`` parts against the fake API (which checks every data URL), against
  a job of as many text prompts: files are read when their request is sent,
  so memory must not grow with them.
- Encoding: MB/s of reading a file and base64-encoding it into a request's
  body (``batchgen.jobs.media.expand``), on one core.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from batchgen.jobs.media import expand
from bench.common import KEY_ENV, fake_server, row
from bench.p04_memory import run_process

RSS_TARGET = 1.2
RATE_TARGET = 200  # MB/s


def write_images(folder: Path, n: int, size: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    body = bytes(range(256)) * (size // 256)
    for i in range(n):
        (folder / f"{i:05d}.jpg").write_bytes(b"\xff\xd8\xff\xe0" + i.to_bytes(4, "big") + body)


def write_job(here: Path, name: str, base_url: str, n: int, images: bool,
              concurrency: int = 8) -> Path:
    if images:
        data = {"glob": "img/*.jpg"}
        template = {"model": "qwen3-vl-plus", "max_tokens": 8, "messages": [
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "file://{{ path }}"}},
                {"type": "text", "text": "[[len=8]] describe {{ stem }}"}]}]}
    else:
        (here / "rows.jsonl").write_text("".join(json.dumps({"n": i}) + "\n" for i in range(n)))
        data = {"path": "rows.jsonl"}
        template = {"model": "qwen3-vl-plus", "max_tokens": 8,
                    "prompt": "[[len=8]] describe picture {{ n }}"}
    job = {"name": name, "output_dir": str(here / "out"), "data": data, "template": template,
           "endpoint": {"base_url": base_url, "api_key_env": KEY_ENV},
           "run": {"concurrency": concurrency}}
    path = here / f"{name}.yaml"
    path.write_text(json.dumps(job), encoding="utf-8")
    return path


def run(quick: bool) -> list[str]:
    n, size = (1_000, 200_000) if quick else (10_000, 200_000)
    rows = []
    with fake_server() as server, tempfile.TemporaryDirectory() as tmp:
        here = Path(tmp)
        write_images(here / "img", n, size)
        text = run_process(["run", str(write_job(here, "text", server.base_url, n, False)),
                            "-q"])
        images = run_process(["run", str(write_job(here, "images", server.base_url, n, True)),
                              "-q"])
        assert text[0] == 0 and images[0] == 0, (text, images)
        done = sum(1 for _ in (here / "out" / "images" / "results.jsonl").open())
        ratio = images[1] / text[1]
        rows.append(row(f"P17 peak RSS, {n:,} images of {size // 1000} KB as file:// parts vs "
                        f"{n:,} text prompts (concurrency 8, the default)",
                        f"{images[1]:.0f} MB vs {text[1]:.0f} MB = **{ratio:.2f}×**; {done:,} "
                        f"answered; {images[2]:.0f} s", f"≤ {RSS_TARGET}×",
                        ratio <= RSS_TARGET and done == n))
        wide = run_process(["run", str(write_job(here, "wide", server.base_url, n, True, 64)),
                            "-q"])
        wide_text = run_process(["run", str(write_job(here, "wtext", server.base_url, n, False,
                                                      64)), "-q"])
        rows.append(row("P17 the same at concurrency 64 (each image in flight is held "
                        "base64-encoded, in its body and on the wire)",
                        f"{wide[1]:.0f} MB vs {wide_text[1]:.0f} MB = "
                        f"{wide[1] / wide_text[1]:.2f}×", "report", None))
        body = {"model": "m", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": f"file://img/{i:05d}.jpg"}}
            for i in range(min(n, 500))]}]}
        t0 = time.process_time()
        out = expand(body, here, (), 10 * 1024 * 1024, raw_audio=True)
        seconds = time.process_time() - t0
        megabytes = min(n, 500) * size / 1e6
        assert out["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/jpeg")
        rate = megabytes / seconds
        rows.append(row("P17 reading, checking and base64-encoding files into a body "
                        "(CPU, one core)", f"**{rate:,.0f} MB/s** ({megabytes:.0f} MB in "
                        f"{seconds:.2f} s)", f"≥ {RATE_TARGET} MB/s", rate >= RATE_TARGET))
    return rows
