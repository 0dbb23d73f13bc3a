"""``audio/<id>.wav``: a speech answer's audio, journaled as it arrives.

The streamed ``delta.audio.data`` pieces (base64 PCM, 16-bit mono, 24 kHz as
Model Studio documents for Qwen-Omni) are decoded and appended to
``audio/<id>.pcm.part`` as they come; when the answer ends the part becomes a
RIFF/WAVE file whose header sizes match its data, written beside it, synced
and renamed into place before the answer is recorded done. An interrupted
speech answer starts afresh (audio cannot be continued): its part is
overwritten by the next attempt.
"""

from __future__ import annotations

import base64
import binascii
import os
import struct
from pathlib import Path
from typing import BinaryIO

from batchgen.jobs.schema import ID_RE

RATE = 24_000
CHANNELS = 1
WIDTH = 2  # bytes a sample


def wav_path(run_dir: Path, request_id: str) -> Path:
    if not ID_RE.match(request_id):  # pragma: no cover - the job loader refuses these
        raise ValueError(f"unsafe request id {request_id!r}")
    return run_dir / "audio" / f"{request_id}.wav"


def wav_header(data_bytes: int, rate: int = RATE) -> bytes:
    """The 44-byte RIFF/WAVE header of ``data_bytes`` of 16-bit PCM."""
    return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, CHANNELS, rate, rate * CHANNELS * WIDTH,
                                    CHANNELS * WIDTH, 8 * WIDTH)
            + b"data" + struct.pack("<I", data_bytes))


def seconds_of(path: Path) -> float:
    """The duration of a WAV file batchgen wrote."""
    return round(max(0, path.stat().st_size - 44) / (RATE * CHANNELS * WIDTH), 3)


class SpeechFile:
    """One attempt's speech: pieces in, ``audio/<id>.wav`` out."""

    def __init__(self, run_dir: Path, request_id: str) -> None:
        self.path = wav_path(run_dir, request_id)
        self.part = self.path.with_suffix(".pcm.part")
        self._fh: BinaryIO | None = None
        self.bytes = 0

    def add(self, piece: str) -> None:
        try:
            pcm = base64.b64decode(piece)
        except (binascii.Error, ValueError):
            return  # a piece that is not base64: skipped (the text still counts)
        if self._fh is None:
            self.part.parent.mkdir(exist_ok=True)
            self._fh = self.part.open("wb")
        self._fh.write(pcm)
        self.bytes += len(pcm)

    def finish(self) -> float | None:
        """Write ``audio/<id>.wav`` (synced, renamed into place); its seconds,
        or None when no audio came."""
        self.close()
        if not self.bytes:
            return None
        tmp = self.path.with_suffix(".wav.tmp")
        with tmp.open("wb") as out, self.part.open("rb") as pcm:
            out.write(wav_header(self.bytes))
            while piece := pcm.read(1 << 20):
                out.write(piece)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)
        self.part.unlink(missing_ok=True)
        return seconds_of(self.path)

    def close(self) -> None:
        """The stream is over (or was left): the part is closed; an attempt that
        does not finish leaves it to be overwritten by the next one."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
