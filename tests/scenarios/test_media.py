"""Local media in messages: file:// read and sent as data URLs, typed by their
bytes, kept inside the job's folder, sized, fingerprinted; a folder as data."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from batchgen.jobs.media import MediaProblem, check, expand, refs, sniff
from batchgen.testing.fakeserver import FakeServer
from tests.helpers import read_results, run_cli, write_job

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 200
JPEG = b"\xff\xd8\xff\xe0" + b"\x10" * 300
WAV = b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 100
MP4 = b"\x00\x00\x00\x18ftypisom" + b"\x00" * 100


def image_prompt(pid: str, url: str, text: str = "[[len=6]] what is this") -> dict[str, Any]:
    return {"id": pid, "model": "qwen3-vl-plus", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]}]}


def media_job(tmp_path: Path, fake: FakeServer, prompts: list[dict[str, Any]],
              **extra: Any) -> Path:
    return write_job(tmp_path / "job.yaml", fake, prompts, **extra)


def images_sent(fake: FakeServer) -> list[str]:
    return [p["image_url"]["url"] for e in fake.ledger.entries for m in e["body"]["messages"]
            if isinstance(m["content"], list) for p in m["content"] if "image_url" in p]


def test_local_images_go_as_data_urls_and_a_changed_one_runs_again(
        tmp_path: Path, fake: FakeServer) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "cat.png").write_bytes(PNG)
    (tmp_path / "img" / "dog.photo").write_bytes(JPEG)  # the name says nothing
    path = media_job(tmp_path, fake, [image_prompt("cat", "file://img/cat.png"),
                                      image_prompt("dog", "file://img/dog.photo")])
    proc = run_cli("run", str(path), "-q")
    assert proc.returncode == 0, proc.stderr
    sent = sorted(images_sent(fake))
    assert sent == sorted([f"data:image/png;base64,{base64.b64encode(PNG).decode()}",
                           f"data:image/jpeg;base64,{base64.b64encode(JPEG).decode()}"])
    stored = (tmp_path / "out" / "t" / "failed.jsonl").read_text()
    assert stored == ""
    assert {r["id"] for r in read_results(tmp_path / "out" / "t")} == {"cat", "dog"}
    # an unchanged re-run sends nothing; a changed image runs again
    assert run_cli("run", str(path), "-q").returncode == 0
    assert len(fake.ledger.entries) == 2
    (tmp_path / "img" / "cat.png").write_bytes(PNG + b"\x01")
    assert run_cli("run", str(path), "-q").returncode == 0
    assert len(fake.ledger.entries) == 3


def test_a_file_url_with_escapes_and_an_absolute_one(tmp_path: Path, fake: FakeServer) -> None:
    """Path.as_uri() writes file:///…/my%20cat.png: the escapes are read as a URL's
    (before: "no such file"); a file whose own name has a % is found as named."""
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "my cat.png").write_bytes(PNG)
    (tmp_path / "img" / "100%25.png").write_bytes(JPEG)
    path = media_job(tmp_path, fake, [
        image_prompt("a", (tmp_path / "img" / "my cat.png").as_uri()),
        image_prompt("b", "file://img/my%20cat.png"),
        image_prompt("c", "file://img/100%25.png")])
    proc = run_cli("run", str(path), "-q")
    assert proc.returncode == 0, proc.stderr
    png = f"data:image/png;base64,{base64.b64encode(PNG).decode()}"
    jpeg = f"data:image/jpeg;base64,{base64.b64encode(JPEG).decode()}"
    assert sorted(images_sent(fake)) == sorted([png, png, jpeg])


def test_a_folder_as_data_with_a_template(tmp_path: Path, fake: FakeServer) -> None:
    for name in ("b.jpg", "a.jpg", "sub/c.jpg"):
        (tmp_path / "photos" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "photos" / name).write_bytes(JPEG + name.encode())
    path = write_job(tmp_path / "job.yaml", fake, [], name="photos",
                     data={"glob": "photos/**/*.jpg"},
                     template={"model": "qwen3-vl-plus", "messages": [{"role": "user", "content": [
                         {"type": "image_url", "image_url": {"url": "file://{{ path }}"}},
                         {"type": "text", "text": "[[len=5]] describe {{ stem }}"}]}]})
    spec = json.loads(path.read_text())
    del spec["prompts"]
    path.write_text(json.dumps(spec))
    proc = run_cli("run", str(path), "-q")
    assert proc.returncode == 0, proc.stderr
    import csv

    with (tmp_path / "out" / "photos" / "table.csv").open(encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    assert [r["path"] for r in table] == ["photos/a.jpg", "photos/b.jpg", "photos/sub/c.jpg"]
    assert all(r["status"] == "done" for r in table)
    assert len(images_sent(fake)) == 3


def test_a_folder_s_hidden_files_are_left_out_unless_the_pattern_names_them(
        tmp_path: Path) -> None:
    """As a shell's `*`: `photos/**/*` on a Mac's folder met `.DS_Store` (and
    thumbnails in `.thumbs/`), and the job was refused as 'not an image'."""
    from batchgen.jobs.data import DataFile, rows

    for name in ("a.jpg", ".DS_Store", ".thumbs/a.jpg", "sub/b.jpg", "sub/.hidden.jpg"):
        (tmp_path / "photos" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "photos" / name).write_bytes(JPEG)

    def paths(pattern: str) -> list[str]:
        data = DataFile(path=None, glob=pattern, base=tmp_path)
        return [row["path"] for row, _ in rows(data, lambda problem: None)]

    assert paths("photos/**/*") == ["photos/a.jpg", "photos/sub/b.jpg"]
    assert paths("photos/.thumbs/*") == ["photos/.thumbs/a.jpg"]
    assert paths("photos/**/.*") == ["photos/.DS_Store", "photos/sub/.hidden.jpg"]


@pytest.mark.parametrize(("setup", "url", "says"), [
    (lambda d: (d / "x.png").write_text("just text"), "file://x.png",
     "x.png is of no known image, video or audio format by its bytes, not an image file"),
    (lambda d: None, "file://missing.png", "no such file"),
    (lambda d: None, "file:///etc/passwd", "outside the job file's folder"),
    (lambda d: os.symlink("/etc/hostname", d / "link.png"), "file://link.png",
     "outside the job file's folder"),
    (lambda d: (d / "big.png").write_bytes(PNG + b"\x00" * 3000), "file://big.png",
     "over run.max_media_bytes"),
    (lambda d: (d / "a.wav").write_bytes(WAV), "file://a.wav",
     "a.wav is audio/wav by its bytes, not an image file"),
])
def test_every_refusal_at_validation(tmp_path: Path, fake: FakeServer, setup: Any, url: str,
                                     says: str) -> None:
    setup(tmp_path)
    path = media_job(tmp_path, fake, [image_prompt("a", url)], run={"max_media_bytes": 2000})
    for command in ("validate", "run"):
        proc = run_cli(command, str(path))
        assert proc.returncode == 2, proc.stderr
        assert says in proc.stderr, proc.stderr
        assert "prompts[0].messages[0].content[0].image_url.url" in proc.stderr
    assert not (tmp_path / "out").exists() and fake.ledger.entries == []


def test_a_media_root_lets_a_job_read_another_folder(tmp_path: Path, fake: FakeServer) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "p.png").write_bytes(PNG)
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    path = write_job(jobs / "job.yaml", fake, [image_prompt("a", f"file://{shared}/p.png")])
    assert run_cli("validate", str(path)).returncode == 2
    assert run_cli("validate", str(path), "--media-root", str(shared)).returncode == 0
    spec = json.loads(path.read_text())
    spec["run"] = {"media_root": "../shared"}
    path.write_text(json.dumps(spec))
    proc = run_cli("run", str(path), "-q")
    assert proc.returncode == 0, proc.stderr


def test_a_file_that_changes_into_something_else_fails_its_request(
        tmp_path: Path, fake: FakeServer) -> None:
    (tmp_path / "a.png").write_bytes(PNG)
    path = media_job(tmp_path, fake, [image_prompt("a", "file://a.png")])
    from batchgen import load_job, run_job

    job = load_job(path, for_run=True)
    (tmp_path / "a.png").write_text("now text")  # after validation, before sending
    summary = run_job(job)
    assert summary.failed == 1 and fake.ledger.entries == []
    status = run_cli("status", str(tmp_path / "out" / "t")).stdout
    assert "a: media" in status and "changed since the job was checked" in status


def test_audio_and_video_parts_and_what_the_fake_refuses() -> None:
    messages = [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "file://a.wav"}},
        {"type": "video", "video": ["file://f1.jpg", "https://x/f2.jpg"]},
        {"type": "video_url", "video_url": {"url": "file://v.mp4"}}]}]
    found = [(r.kind, r.value) for r in refs(messages)]
    assert found == [("audio", "file://a.wav"), ("image", "file://f1.jpg"),
                     ("video", "file://v.mp4")]
    assert sniff(MP4) == "video/mp4" and sniff(WAV) == "audio/wav" and sniff(b"hello") is None


def test_a_file_of_another_kind_is_named_by_what_it_is(tmp_path: Path) -> None:
    (tmp_path / "a.wav").write_bytes(WAV)
    with pytest.raises(MediaProblem, match=r"a\.wav is audio/wav by its bytes, not a video "
                       r"file; a part that takes video needs one of: video/mp4"):
        check("file://a.wav", "video", tmp_path, (), 10_000)
    (tmp_path / "v.mp4").write_bytes(MP4)
    with pytest.raises(MediaProblem, match=r"is video/mp4 by its bytes, not an audio file"):
        check("file://v.mp4", "audio", tmp_path, (), 10_000)


def test_expand_puts_audio_in_the_form_the_endpoint_takes(tmp_path: Path) -> None:
    (tmp_path / "a.wav").write_bytes(WAV)
    body: dict[str, Any] = {"model": "qwen-omni-turbo", "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "file://a.wav"}}]}]}
    raw = expand(body, tmp_path, (), 10_000, raw_audio=True)
    part = raw["messages"][0]["content"][0]["input_audio"]
    assert part == {"data": base64.b64encode(WAV).decode(), "format": "wav"}
    url = expand(body, tmp_path, (), 10_000, raw_audio=False)
    assert url["messages"][0]["content"][0]["input_audio"]["data"].startswith("data:;base64,")
    assert body["messages"][0]["content"][0]["input_audio"]["data"] == "file://a.wav"


def test_the_fake_refuses_a_malformed_data_url(fake: FakeServer, tmp_path: Path) -> None:
    path = media_job(tmp_path, fake, [image_prompt("a", "data:image/png;base64,@@@")])
    proc = run_cli("run", str(path), "-q")
    assert proc.returncode == 1
    status = run_cli("status", str(tmp_path / "out" / "t")).stdout
    assert "not hold valid base64" in status


def read_wav(path: Path) -> tuple[int, int, bytes]:
    """(sample rate, data size in the header, the samples) of a WAV file,
    checking its RIFF and data sizes against the file."""
    import struct

    raw = path.read_bytes()
    assert raw[:4] == b"RIFF" and raw[8:16] == b"WAVEfmt "
    assert struct.unpack("<I", raw[4:8])[0] == len(raw) - 8
    channels, rate = struct.unpack("<HI", raw[22:28])
    assert channels == 1 and struct.unpack("<H", raw[34:36])[0] == 16
    assert raw[36:40] == b"data"
    size = struct.unpack("<I", raw[40:44])[0]
    assert size == len(raw) - 44
    return rate, size, raw[44:]


def speech_prompts(n: int, extra: str = "") -> list[dict[str, Any]]:
    return [{"id": f"s{i}", "model": "qwen3-omni-flash", "prompt": f"[[len=20]]{extra} say {i}",
             "modalities": ["text", "audio"], "audio": {"voice": "Cherry", "format": "wav"}}
            for i in range(n)]


def test_speech_out_is_written_as_wav(tmp_path: Path, fake: FakeServer) -> None:
    prices = {"qwen3-omni-flash": {"currency": "CNY", "input": 1.0, "output": 4.0,
                                   "audio_output": 100.0}}
    path = write_job(tmp_path / "job.yaml", fake, speech_prompts(2), pricing=prices)
    proc = run_cli("run", str(path), "-q")
    assert proc.returncode == 0, proc.stderr
    run_dir = tmp_path / "out" / "t"
    # speech tokens (2 a text token) at the audio price, apart in the report
    report = json.loads((run_dir / "report.json").read_text())
    [row] = report["rows"]
    assert row["audio_completion_tokens"] == 2 * 2 * 20 and row["audio_prompt_tokens"] == 0
    text_out = row["completion_tokens"] - row["audio_completion_tokens"]
    want = (row["prompt_tokens"] * 1.0 + text_out * 4.0 + 80 * 100.0) / 1e6
    assert row["cost"] == pytest.approx(want)
    assert "- audio: qwen3-omni-flash: 0 prompt tokens heard, 80 completion tokens said" in \
        (run_dir / "report.md").read_text()
    assert not report["warnings"]
    for result in read_results(run_dir):
        assert result["audio"] == f"audio/{result['id']}.wav"
        rate, size, _ = read_wav(run_dir / result["audio"])
        assert rate == 24_000 and size == 20 * 480 * 2  # 20 tokens of 20 ms
        assert result["audio_seconds"] == 0.4
        assert (run_dir / "texts" / f"{result['id']}.md").read_text() == result["content"]
    assert not list((run_dir / "audio").glob("*.part"))
    # a deleted wav cannot come back (speech is kept nowhere else) and is not asked for
    # again; the next run's results stop naming it
    (run_dir / "audio" / "s0.wav").unlink()
    sent = fake.ledger.requests
    assert run_cli("run", str(path), "-q").returncode == 0
    assert fake.ledger.requests == sent
    lost, kept = read_results(run_dir)
    assert "audio" not in lost and kept["audio"] == "audio/s1.wav"


def test_speech_priced_at_text_prices_is_said_so(tmp_path: Path, fake: FakeServer) -> None:
    # a `pricing:` entry without audio prices prices speech as text, far below what
    # speech costs: the report says which price is missing, and the tokens it covered
    prices = {"qwen3-omni-flash": {"currency": "CNY", "input": 1.0, "output": 4.0}}
    path = write_job(tmp_path / "job.yaml", fake, speech_prompts(2), pricing=prices)
    assert run_cli("run", str(path), "-q").returncode == 0
    run_dir = tmp_path / "out" / "t"
    report = json.loads((run_dir / "report.json").read_text())
    [row] = report["rows"]
    assert row["cost"] == pytest.approx((row["prompt_tokens"] + row["completion_tokens"] * 4.0)
                                        / 1e6)
    [warning] = report["warnings"]
    assert "no audio_output price for model 'qwen3-omni-flash': its 80 audio tokens said" \
        in warning and "`audio_output`" in warning
    assert f"warning: {warning}" in (run_dir / "report.md").read_text()


def test_a_data_job_s_table_names_each_spoken_answer(tmp_path: Path, fake: FakeServer) -> None:
    """Speech from rows of data: the table gains ``audio`` (the wav, relative to
    the run directory, as in results.jsonl) and ``audio_seconds``; an input
    column named ``audio`` needs ``output.prefix``, as any other clash does."""
    (tmp_path / "lines.csv").write_text("k,line\nk1,hello\nk2,goodbye\n", encoding="utf-8")

    def speech_job(**output: Any) -> Path:
        path = write_job(tmp_path / "job.yaml", fake, [], data={"path": "lines.csv", "id": "k"},
                         template={**{k: v for k, v in speech_prompts(1)[0].items()
                                      if k != "id"}, "prompt": "[[len=20]] say {{ line }}"},
                         output=output)
        spec = json.loads(path.read_text())
        del spec["prompts"]
        path.write_text(json.dumps(spec))
        return path

    proc = run_cli("run", str(speech_job(format="jsonl")), "-q")
    assert proc.returncode == 0, proc.stderr
    run_dir = tmp_path / "out" / "t"
    table = [json.loads(line) for line in (run_dir / "table.jsonl").read_text().splitlines()]
    assert list(table[0])[-3:] == ["error", "audio", "audio_seconds"]
    for row in table:
        assert row["audio"] == f"audio/{row['id']}.wav" and row["audio_seconds"] == 0.4
        assert (run_dir / row["audio"]).is_file()
    parquet = run_dir / "t.parquet"
    assert run_cli("export", str(run_dir), "-o", str(parquet)).returncode == 0
    import pyarrow.parquet as pq

    types = {f.name: str(f.type) for f in pq.read_table(parquet).schema}
    assert (types["audio"], types["audio_seconds"]) == ("string", "double")

    (tmp_path / "lines.csv").write_text("k,line,audio\nk1,hi,a.wav\n", encoding="utf-8")
    proc = run_cli("run", str(speech_job(format="jsonl")), "--name", "clash", "-q")
    assert proc.returncode == 2
    assert "the table's column 'audio' (what batchgen writes) has the name of an input " \
        "column; set `output.prefix:`" in proc.stderr
    proc = run_cli("run", str(speech_job(format="jsonl", prefix="gen_")), "--name", "clash",
                   "-q")
    assert proc.returncode == 0, proc.stderr
    [row] = [json.loads(line) for line in
             (tmp_path / "out" / "clash" / "table.jsonl").read_text().splitlines()]
    assert (row["audio"], row["gen_audio"]) == ("a.wav", "audio/k1.wav")


@pytest.mark.slow
def test_kill_9_during_speech_starts_it_afresh_and_the_wav_is_whole(tmp_path: Path) -> None:
    import random
    import subprocess
    import sys

    from batchgen.testing.process import FakeProcess
    from tests.helpers import KEY_ENV, ROOT, kill_until_done

    with FakeProcess("--api-key", os.environ[KEY_ENV]) as server:
        def job(where: str) -> Path:
            folder = tmp_path / where
            folder.mkdir()
            return write_job(folder / "job.yaml", None, speech_prompts(6, " [[delay=0.03]]"),
                             endpoint={"base_url": server.base_url, "api_key_env": KEY_ENV,
                                       "continuation": "partial"}, run={"concurrency": 2})

        env = {**os.environ, "PYTHONPATH": str(ROOT)}

        def start(path: Path) -> Any:
            return subprocess.Popen([sys.executable, "-m", "batchgen", "run", str(path), "-q"],
                                    env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)

        clean = job("clean")
        assert start(clean).wait(120) == 0
        killed = job("killed")
        kills = kill_until_done(lambda: start(killed), random.Random(3), 0.4, 1.0,
                                run_db=tmp_path / "killed" / "out" / "t" / "run.db")
        assert kills >= 1
    for result in read_results(tmp_path / "killed" / "out" / "t"):
        got = read_wav(tmp_path / "killed" / "out" / "t" / result["audio"])
        want = read_wav(tmp_path / "clean" / "out" / "t" / result["audio"])
        assert got == want  # whole, never a seam of two attempts
    import sqlite3

    with sqlite3.connect(tmp_path / "killed" / "out" / "t" / "run.db") as db:
        assert db.execute("SELECT COUNT(*) FROM attempts WHERE mode = 'continue'"
                          ).fetchone()[0] == 0  # speech starts afresh


def test_the_local_text_model_is_not_sent_images(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(PNG)
    path = write_job(tmp_path / "job.yaml", None, [image_prompt("a", "file://a.png")],
                     endpoint="local")
    proc = run_cli("validate", str(path))
    assert proc.returncode == 2 and "reads text only" in proc.stderr, proc.stderr


def test_audio_in_goes_as_base64_with_its_format(tmp_path: Path, fake: FakeServer) -> None:
    (tmp_path / "q.wav").write_bytes(WAV)
    path = write_job(tmp_path / "job.yaml", fake, [
        {"id": "heard", "model": "qwen3-omni-flash", "messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "file://q.wav"}},
            {"type": "text", "text": "[[len=5]] what is said?"}]}]}])
    proc = run_cli("run", str(path), "-q")
    assert proc.returncode == 0, proc.stderr
    (entry,) = fake.ledger.entries
    part = entry["body"]["messages"][0]["content"][0]["input_audio"]
    assert part == {"data": base64.b64encode(WAV).decode(), "format": "wav"}
