"""texts/ files written atomically, named by strings or paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from batchgen.outputs import files


def test_many_files_are_written_whole_by_str_or_path_with_no_temporary_left(
        tmp_path: Path) -> None:
    texts = tmp_path / "texts"
    texts.mkdir()
    files.reserve_temp(texts / "a.md")  # made while it streamed: filled in place
    inode = os.stat(files.temp_of(texts / "a.md")).st_ino
    files.write_many_atomic([(str(texts / "a.md"), b"first"), (texts / "b.md", "b é".encode()),
                             (str(texts / "a.md"), b"last")])  # given twice: its last content
    assert sorted(p.name for p in texts.iterdir()) == ["a.md", "b.md"]
    assert (texts / "a.md").read_bytes() == b"last"
    assert (texts / "a.md").stat().st_ino == inode
    assert (texts / "b.md").read_text(encoding="utf-8") == "b é"


def test_a_bare_file_name_is_written_in_the_current_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert files.temp_of("x.md") == f".x.md.{os.getpid()}.tmp"
    files.write_many_atomic([("x.md", b"x")])
    assert [p.name for p in tmp_path.iterdir()] == ["x.md"]


def test_answer_file_names_refuse_an_unsafe_id(tmp_path: Path) -> None:
    rows = files.text_files(tmp_path, "r1", "text", "thought", '{"a": 1}')
    assert [os.path.relpath(path, tmp_path) for path, _ in rows] == [
        os.path.join("texts", name) for name in ("r1.md", "r1.reasoning.md", "r1.json")]
    assert files.text_path(tmp_path, "r1", reasoning=True) == tmp_path / "texts" / "r1.reasoning.md"
    assert files.text_name("r1", ".json") == "r1.json"
    with pytest.raises(ValueError, match="unsafe request id"):
        files.text_files(tmp_path, "../etc/passwd", "text", "")
