"""What the fake checks of media in a request, as a real vision endpoint does:
every image, video and audio part carries a well-formed data URL (or an
https URL) whose bytes are the type it declares. A ``file://`` (a path the
client should have read) or a malformed data URL is a 400, worded as Model
Studio words it."""

from __future__ import annotations

import base64
import binascii
from typing import Any

# the first bytes of each type the fake accepts in a data URL
MAGIC = {"image/jpeg": (b"\xff\xd8\xff",), "image/png": (b"\x89PNG",),
         "image/gif": (b"GIF8",), "image/webp": (b"RIFF",), "image/bmp": (b"BM",),
         "video/mp4": (b"ftyp",), "video/quicktime": (b"ftyp",), "video/webm": (b"\x1aE\xdf\xa3",),
         "audio/wav": (b"RIFF",), "audio/mpeg": (b"ID3", b"\xff"), "audio/flac": (b"fLaC",),
         "audio/ogg": (b"OggS",), "audio/mp4": (b"ftyp",)}


def media_problem(body: dict[str, Any]) -> str | None:
    """Why the request's media would be refused, or None."""
    for message in body.get("messages") or []:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            if not isinstance(part, dict):
                continue
            urls = [(part.get(k) or {}).get("url") for k in ("image_url", "video_url")
                    if isinstance(part.get(k), dict)]
            urls += [u for u in part.get("video") or [] if isinstance(u, str)]
            for url in urls:
                problem = _url_problem(url)
                if problem:
                    return problem
            audio = part.get("input_audio")
            if isinstance(audio, dict):
                data = str(audio.get("data", ""))
                raw = data.split(",", 1)[1] if data.startswith("data:") else data
                if not _decodes(raw) or not audio.get("format"):
                    return "The input_audio data is not valid base64 audio with a format"
    return None


def _url_problem(url: Any) -> str | None:
    if not isinstance(url, str):
        return "The media URL is missing"
    if url.startswith(("https://", "http://")):
        return None
    if not url.startswith("data:") or ";base64," not in url:
        return f"The provided URL is not a valid URL: {url[:40]}"
    mime, _, payload = url[5:].partition(";base64,")
    raw = _decodes(payload)
    if raw is None:
        return "The data URL does not hold valid base64"
    head = raw[:12]
    magic = MAGIC.get(mime)
    if magic is None or not any(m in head for m in magic):
        return f"The data URL's bytes are not {mime}"
    return None


def _decodes(payload: str) -> bytes | None:
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return None
