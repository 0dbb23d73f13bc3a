"""Local files in messages: ``file://PATH`` in a content part, sent as data.

Where a part takes media — ``image_url.url``, ``video_url.url``, each frame
URL of a ``video`` list, ``input_audio.data`` — a value ``file://PATH`` names
a file (PATH relative to the job file's folder, or absolute). When the job
is loaded each such file is checked: it must resolve, after symlinks, inside
the job file's folder or a media root (``run.media_root`` /
``--media-root``) — a job file someone else wrote cannot send your
``~/.ssh/id_rsa`` as an "image"; its type comes from its bytes and must be
the kind its part takes; base64-encoded it must fit ``run.max_media_bytes``.
Its SHA-256 joins the request's fingerprint: a changed file runs again.

The stored request keeps the ``file://`` reference; :func:`expand` reads the
files when the request is sent (a job of 100,000 images holds none of them in
memory), checks them again, and puts ``data:<mime>;base64,...`` in their place
(for ``input_audio``: the base64 and its ``format``, in the form the endpoint
takes).
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

SCHEME = "file://"
READ = 1 << 20
DEFAULT_MAX_BYTES = 10 * 1024 * 1024

IMAGE = ("image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp")
VIDEO = ("video/mp4", "video/quicktime", "video/webm")
AUDIO = ("audio/wav", "audio/mpeg", "audio/flac", "audio/ogg", "audio/mp4")
KINDS = {"image": IMAGE, "video": VIDEO, "audio": AUDIO}
AUDIO_FORMATS = {"audio/wav": "wav", "audio/mpeg": "mp3", "audio/flac": "flac",
                 "audio/ogg": "ogg", "audio/mp4": "m4a"}


class MediaProblem(ValueError):
    """A file a part names that cannot be sent: which, and why."""


def sniff(head: bytes) -> str | None:
    """The MIME type a file's first bytes show, among those batchgen sends."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head.startswith(b"BM") and len(head) >= 26:
        return "image/bmp"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wav"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand == b"qt  ":
            return "video/quicktime"
        if brand in (b"M4A ", b"M4B "):
            return "audio/mp4"
        return "video/mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm"
    if head.startswith(b"fLaC"):
        return "audio/flac"
    if head.startswith(b"OggS"):
        return "audio/ogg"
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "audio/mpeg"
    return None


@dataclass(frozen=True)
class Ref:
    """One ``file://`` in a request: where in the messages, and what kind it must be."""

    where: tuple[Any, ...]  # path inside the messages list
    kind: str  # image | video | audio
    value: str  # the file:// URL as written


def refs(messages: list[dict[str, Any]]) -> Iterator[Ref]:
    """Every ``file://`` reference in the messages' content parts."""
    for i, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if not isinstance(part, dict):
                continue
            at = (i, "content", j)
            for key, kind in (("image_url", "image"), ("video_url", "video")):
                inner = part.get(key)
                if isinstance(inner, dict) and _is_file(inner.get("url")):
                    yield Ref((*at, key, "url"), kind, inner["url"])
                elif _is_file(inner):  # the string form some providers take
                    yield Ref((*at, key), kind, str(inner))
            frames = part.get("video")
            if isinstance(frames, list):
                for k, frame in enumerate(frames):
                    if _is_file(frame):
                        yield Ref((*at, "video", k), "image", frame)
            audio = part.get("input_audio")
            if isinstance(audio, dict) and _is_file(audio.get("data")):
                yield Ref((*at, "input_audio", "data"), "audio", audio["data"])


def _is_file(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(SCHEME)


def resolve(value: str, base: Path, roots: tuple[Path, ...]) -> Path:
    """The file a ``file://`` URL names, inside the job's folder or a media root."""
    raw = value[len(SCHEME):]
    if not raw:
        raise MediaProblem("file:// names no file")
    full = _full(raw, base)
    if "%" in raw and not full.exists():  # a URL's escapes (Path.as_uri: a%20b.png)
        decoded = _full(unquote(raw), base)
        full = decoded if decoded.exists() else full
    return allowed(raw, full, base, roots)


def inside(raw: str, base: Path, roots: tuple[Path, ...]) -> Path:
    """The file a path names (relative to ``base``), inside it or a media root."""
    return allowed(raw, _full(raw, base), base, roots)


def allowed(raw: str, full: Path, base: Path, roots: tuple[Path, ...]) -> Path:
    """``full`` (``raw`` resolved), if it is inside the job's folder or a media root."""
    places = (base.resolve(), *(r.resolve() for r in roots))
    if not any(full.is_relative_to(root) for root in places):
        where = ", ".join(str(r) for r in places)
        raise MediaProblem(f"{raw} resolves to {full}, outside the job file's folder and "
                           f"the media roots ({where}); put it there, or name its folder "
                           "with run.media_root or --media-root")
    return full


def _full(raw: str, base: Path) -> Path:
    path = Path(raw)
    return (path if path.is_absolute() else base / path).resolve()


@dataclass(frozen=True)
class Checked:
    path: Path
    mime: str
    size: int  # bytes on disk
    sha256: str


def encoded_size(size: int) -> int:
    return (size + 2) // 3 * 4


def check(value: str, kind: str, base: Path, roots: tuple[Path, ...],
          max_bytes: int, digest: bool = True) -> Checked:
    """A referenced file, checked: inside the roots, of its part's kind, small
    enough once base64-encoded; read once to hash it (``digest``; else only
    its first bytes are read, and ``sha256`` is empty)."""
    path = resolve(value, base, roots)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise MediaProblem(f"{path} is not a regular file")
        if encoded_size(size) > max_bytes:
            raise MediaProblem(f"{path} is {size:,} bytes, {encoded_size(size):,} once "
                               f"base64-encoded: over run.max_media_bytes ({max_bytes:,}); "
                               "shrink it or raise the limit")
        hasher = hashlib.sha256()
        with path.open("rb") as fh:
            head = fh.read(64)
            hasher.update(head)
            while digest and (piece := fh.read(READ)):
                hasher.update(piece)
    except FileNotFoundError:
        raise MediaProblem(f"{path}: no such file") from None
    except OSError as exc:
        raise MediaProblem(f"{path}: cannot read: {exc.strerror or exc}") from None
    mime = sniff(head)
    if mime not in KINDS[kind]:
        shown = f"{mime} by its bytes" if mime else \
            "of no known image, video or audio format by its bytes"
        article = "an" if kind[0] in "aeiou" else "a"
        raise MediaProblem(f"{path} is {shown}, not {article} {kind} file; a part "
                           f"that takes {kind} needs one of: {', '.join(KINDS[kind])}")
    return Checked(path, mime, size, hasher.hexdigest() if digest else "")


def expand(body: dict[str, Any], base: Path, roots: tuple[Path, ...], max_bytes: int,
           raw_audio: bool) -> dict[str, Any]:
    """``body`` with each ``file://`` replaced by its data, read now and checked
    again (a file may have changed since the job was loaded). ``raw_audio``:
    ``input_audio.data`` as bare base64 (OpenAI), else as a data URL
    (``data:;base64,...``, as Model Studio takes it)."""
    messages = body.get("messages") or []
    found = list(refs(messages))
    if not found:
        return body
    out = {**body, "messages": _copy(messages)}
    for ref in found:
        checked = check(ref.value, ref.kind, base, roots, max_bytes, digest=False)
        data = base64.b64encode(checked.path.read_bytes()).decode("ascii")
        if ref.kind == "audio":
            holder = _at(out["messages"], ref.where[:-1])
            holder["data"] = data if raw_audio else f"data:;base64,{data}"
            holder.setdefault("format", AUDIO_FORMATS[checked.mime])
        else:
            _put(out["messages"], ref.where, f"data:{checked.mime};base64,{data}")
    return out


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _at(root: Any, where: tuple[Any, ...]) -> Any:
    node = root
    for step in where:
        node = node[step]
    return node


def _put(root: Any, where: tuple[Any, ...], value: Any) -> None:
    _at(root, where[:-1])[where[-1]] = value


def roots_from(given: str | os.PathLike[str] | None, base: Path) -> tuple[Path, ...]:
    """The media roots: ``run.media_root`` / ``--media-root`` (relative to the
    job file's folder), if given."""
    if not given:
        return ()
    path = Path(given).expanduser()
    return ((path if path.is_absolute() else base / path),)


def raw_audio_for(base_url: str) -> bool:
    """Whether the endpoint takes ``input_audio.data`` as bare base64 (OpenAI,
    llama-server) rather than a data URL (Model Studio's Qwen-Omni)."""
    host = (urlsplit(base_url).hostname or "").lower()
    return not host.endswith(("dashscope.aliyuncs.com", "dashscope-intl.aliyuncs.com"))


MEDIA_PARTS = frozenset({"image_url", "video_url", "video", "input_audio", "image", "audio"})


def has_media(messages: list[dict[str, Any]]) -> bool:
    """Whether any message has an image, video or audio part (a file or a URL)."""
    return any(isinstance(part, dict) and MEDIA_PARTS & part.keys()
               for message in messages if isinstance(message.get("content"), list)
               for part in message["content"])
