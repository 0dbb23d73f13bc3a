"""The provider's Batch API, one remote step at a time (OpenAI-compatible).

Upload a JSONL file (``files.create(purpose="batch")``), create a batch
(``batches.create``), poll it (``batches.retrieve``), download its output and
error files, through the openai SDK's client (:func:`open_client`, the only
place batchgen imports the SDK). Every step can be looked up
again after a crash: an uploaded file by its name (which holds the batch's
run key), a created batch by its input file (``batches.list``), so no step is
ever taken twice for the same requests.

Files hold at most ``MAX_LINES`` lines and ``MAX_BYTES`` bytes, and one model
each (Model Studio's rules).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from functools import cache
from importlib import resources
from typing import Any

from batchgen.errors import UsageError
from batchgen.jobs.yamlmarks import safe_load

MAX_LINES = 50_000
MAX_BYTES = 500 * 1024 * 1024
ENDPOINT = "/v1/chat/completions"
LIST_LIMIT = 1000  # batches looked at when looking for one whose create answer was lost
ENDED = frozenset({"completed", "expired", "failed", "cancelled"})


@cache
def _stream_only() -> tuple[re.Pattern[str], str]:
    text = resources.files("batchgen.batch_api").joinpath("streamonly.yaml").read_text("utf-8")
    data = safe_load(text)
    pattern = re.compile("^(?:" + "|".join(data["patterns"]) + ")", re.IGNORECASE)
    return pattern, str(data["source"])


def check_models(models: Iterable[str]) -> None:
    """Refuse, before anything is sent, models that answer only streamed calls."""
    pattern, source = _stream_only()
    refused = sorted({m for m in models if pattern.match(m)})
    if refused:
        raise UsageError(
            f"--via batch: {', '.join(refused)} accept{'s' if len(refused) == 1 else ''} only "
            f"streamed calls (see {source}); nothing was sent. Run them without --via batch "
            "(streamed), or choose another model")


def line(request_id: str, body: dict[str, Any]) -> bytes:
    """One input line: the request as raw HTTP sends it (provider keys at the top)."""
    flat = {k: v for k, v in body.items() if k != "extra_body"}
    flat.update(body.get("extra_body") or {})
    return (json.dumps({"custom_id": request_id, "method": "POST", "url": ENDPOINT,
                        "body": flat}, ensure_ascii=False) + "\n").encode("utf-8")


def chunks(lines: Iterable[tuple[str, str, bytes]], max_lines: int = MAX_LINES,
           max_bytes: int = MAX_BYTES) -> Iterator[list[tuple[str, str, bytes]]]:
    """(id, fingerprint, line) in files of at most ``max_lines`` / ``max_bytes``."""
    out: list[tuple[str, str, bytes]] = []
    size = 0
    for item in lines:
        if out and (len(out) >= max_lines or size + len(item[2]) > max_bytes):
            yield out
            out, size = [], 0
        out.append(item)
        size += len(item[2])
    if out:
        yield out


def _get(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def open_client(base_url: str, api_key: str, *, connect_timeout: float,
                headers: Mapping[str, str] | None = None) -> Any:
    """The openai SDK's async client for the Batch API: its own retries off
    (batchgen's Batch runner retries each step), redirects not followed (they
    would carry the key to another origin); ``headers``: the job's own."""
    import openai

    timeout = openai.Timeout(connect=connect_timeout, read=600.0, write=600.0, pool=None)
    return openai.AsyncOpenAI(
        api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout,
        default_headers=dict(headers or {}),
        http_client=openai.DefaultAsyncHttpxClient(timeout=timeout, follow_redirects=False))


class Remote:
    """The Batch API through an openai SDK client."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def find_file(self, filename: str) -> str | None:
        """An uploaded input file by its name, when the upload's answer was lost."""
        async for file in self.client.files.list(purpose="batch"):
            if _get(file, "filename") == filename:
                return str(_get(file, "id"))
        return None

    async def upload(self, filename: str, data: bytes) -> str:
        file = await self.client.files.create(file=(filename, data, "application/jsonl"),
                                              purpose="batch")
        return str(_get(file, "id"))

    async def find_batch(self, file_id: str) -> Any | None:
        """The batch made from ``file_id``, when the create's answer was lost."""
        seen = 0
        async for batch in self.client.batches.list(limit=100):
            if _get(batch, "input_file_id") == file_id:
                return batch
            seen += 1
            if seen >= LIST_LIMIT:
                break
        return None

    async def create(self, file_id: str, run_key: str) -> Any:
        # ds_name / ds_description are the metadata keys Model Studio documents
        return await self.client.batches.create(
            input_file_id=file_id, endpoint=ENDPOINT, completion_window="24h",
            metadata={"ds_name": "batchgen", "ds_description": f"batchgen {run_key}"})

    async def retrieve(self, batch_id: str) -> Any:
        return await self.client.batches.retrieve(batch_id)

    async def content(self, file_id: str) -> bytes:
        response = await self.client.files.content(file_id)
        data = response.read()
        if hasattr(data, "__await__"):
            data = await data
        return bytes(data)


def counts(batch: Any) -> dict[str, int]:
    raw = _get(batch, "request_counts")
    return {k: int(_get(raw, k) or 0) for k in ("total", "completed", "failed")} if raw else {}


def status(batch: Any) -> str:
    return str(_get(batch, "status") or "unknown")


def batch_id(batch: Any) -> str:
    return str(_get(batch, "id"))


def files_of(batch: Any) -> tuple[str | None, str | None]:
    return _get(batch, "output_file_id"), _get(batch, "error_file_id")


def errors_of(batch: Any) -> list[tuple[int | None, str | None, str]]:
    """Why the provider failed a batch (its input did not pass validation), as
    its ``errors`` list says: (the input file's line, 1-based, when one is
    named; the code; the message)."""
    out: list[tuple[int | None, str | None, str]] = []
    for e in _get(_get(batch, "errors"), "data") or []:
        line, code, message = _get(e, "line"), _get(e, "code"), _get(e, "message")
        out.append((line if isinstance(line, int) and not isinstance(line, bool) else None,
                    str(code) if code else None, str(message or "no reason given")))
    return out
