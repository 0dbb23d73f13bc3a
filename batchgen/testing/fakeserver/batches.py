"""The fake API's Batch API: files, batches, list, cancel — OpenAI's shapes.

``POST /files`` (multipart: ``purpose``, ``file``), ``GET /files``,
``GET /files/{id}/content``; ``POST /batches``, ``GET /batches`` (newest first,
``limit`` / ``after``), ``GET /batches/{id}``, ``POST /batches/{id}/cancel``.

A batch moves one step each time it is retrieved — ``validating`` →
``in_progress`` → ``finalizing`` → how it ends, as ``POST /_control/batch``
sets it: ``{"end": "completed" | "expired" | "failed" | "cancelled",
"answer": N}`` (with expired / cancelled, the first N lines are answered and
the rest never are). A ``failed`` batch fails at ``validating``, as an input
file that does not pass validation does, with no line answered and the
reasons in its ``errors`` (``{"object": "list", "data": [{"code", "message",
"param", "line"}]}``): ``"errors": [...]`` in the same control sets them
(default: one for the whole file, no line named). A batch with a line whose
prompt holds ``[[refuse_line]]`` fails so too, whatever the control says,
its errors naming each such line. ``"fail": N`` makes the next N calls
answer 503. Each
line is answered as the streamed API would answer it (the same text, the same
``[[faults=...]]``: ``400``/``404`` give a 400 error line, ``429`` and 5xx a
retryable one) and billed in the ledger (``"via": "batch"``).
``delay_upload_after``, ``delay_create_before`` and ``delay_create_after``
(seconds) hold an answer back, for tests that kill a client between two
remote steps (a create held back *before* it is made is dropped when the
client hung up: it never reached the provider); ``events`` lists what
happened.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from batchgen.testing.fakeserver.plan import Config, plan_for, request_key

STEPS = ("validating", "in_progress", "finalizing")


@dataclass
class BatchState:
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # batch ids, oldest first
    settings: dict[str, Any] = field(default_factory=lambda: {"end": "completed", "answer": 0})
    events: list[list[Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)  # of every call, in order


def multipart(headers: dict[str, str], raw: bytes) -> dict[str, tuple[str | None, bytes]]:
    """name -> (filename, content) of a multipart/form-data body."""
    match = re.search(r'boundary="?([^";]+)"?', headers.get("content-type", ""))
    if not match:
        return {}
    out: dict[str, tuple[str | None, bytes]] = {}
    for part in raw.split(b"--" + match[1].encode())[1:]:
        if part.startswith(b"--"):
            break
        head, _, body = part.lstrip(b"\r\n").partition(b"\r\n\r\n")
        text = head.decode("latin-1")
        name = re.search(r'name="([^"]*)"', text)
        filename = re.search(r'filename="([^"]*)"', text)
        if name:
            out[name[1]] = (filename[1] if filename else None, body.removesuffix(b"\r\n"))
    return out


class BatchAPI:
    def __init__(self, config: Config, ledger: Any, lock: Any) -> None:
        self.config = config
        self.ledger = ledger
        self.lock = lock
        self.state = BatchState()

    def handles(self, path: str) -> bool:
        return bool(re.search(r"/(files|batches)(/|$|\?)", path))

    async def route(self, method: str, path: str, headers: dict[str, str], raw: bytes,
                    gone: Any = None) -> tuple[int, Any, bytes | None]:
        """(status, JSON answer, or raw bytes for file content). ``gone()`` tells
        whether the client hung up (a create held back is then never made)."""
        route, _, query = path.partition("?")
        params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
        s = self.state
        s.headers.append(headers)
        if s.settings.get("fail", 0) > 0:  # the next N calls fail, as an overloaded API does
            s.settings["fail"] -= 1
            return 503, {"error": {"message": "service busy", "code": "overloaded"}}, None
        if method == "POST" and route.endswith("/files"):
            form = multipart(headers, raw)
            filename, data = form.get("file", (None, b""))
            file_id = f"file-batch-{uuid.uuid4().hex[:12]}"
            s.files[file_id] = {"id": file_id, "object": "file", "bytes": len(data),
                                "created_at": int(time.time()), "filename": filename,
                                "purpose": form.get("purpose", (None, b""))[1].decode(),
                                "status": "processed", "data": data}
            s.events.append(["upload", file_id])
            await asyncio.sleep(float(s.settings.get("delay_upload_after", 0)))
            return 200, _public(s.files[file_id]), None
        if method == "GET" and route.endswith("/files"):
            files = [_public(f) for f in s.files.values()
                     if params.get("purpose") in (None, f["purpose"])]
            return 200, {"object": "list", "data": files[::-1], "has_more": False}, None
        found = re.search(r"/files/([^/]+)/content$", route)
        if method == "GET" and found:
            file = s.files.get(found[1])
            return (404, {"error": {"message": "no such file"}}, None) if file is None else (
                200, None, file["data"])
        if method == "POST" and route.endswith("/batches"):
            body = json.loads(raw)
            await asyncio.sleep(float(s.settings.get("delay_create_before", 0)))
            if gone is not None and gone():
                return 499, {"error": {"message": "client closed the request"}}, None
            if body.get("input_file_id") not in s.files:
                return 400, {"error": {"message": "no such input file",
                                       "code": "invalid_file"}}, None
            batch_id = f"batch_{uuid.uuid4().hex[:16]}"
            s.batches[batch_id] = {
                "id": batch_id, "object": "batch", "endpoint": body.get("endpoint"),
                "input_file_id": body["input_file_id"], "completion_window": "24h",
                "status": "validating", "output_file_id": None, "error_file_id": None,
                "created_at": int(time.time()), "metadata": body.get("metadata"),
                "request_counts": {"total": 0, "completed": 0, "failed": 0}, "errors": None}
            s.order.append(batch_id)
            s.events.append(["create", batch_id])
            await asyncio.sleep(float(s.settings.get("delay_create_after", 0)))
            return 200, s.batches[batch_id], None
        if method == "GET" and route.endswith("/batches"):
            ids = s.order[::-1]
            if "after" in params and params["after"] in ids:
                ids = ids[ids.index(params["after"]) + 1:]
            limit = int(params.get("limit", 20))
            page = [s.batches[i] for i in ids[:limit]]
            return 200, {"object": "list", "data": page, "has_more": len(ids) > limit,
                         "first_id": page[0]["id"] if page else None,
                         "last_id": page[-1]["id"] if page else None}, None
        found = re.search(r"/batches/([^/]+)(/cancel)?$", route)
        if found and found[1] in s.batches:
            batch = s.batches[found[1]]
            if method == "POST" and found[2]:
                batch["status"] = "cancelling"
                return 200, batch, None
            if method == "GET":
                self._advance(batch)
                return 200, batch, None
        return 404, {"error": {"message": f"no route {method} {route}", "code": "not_found"}}, None

    def _advance(self, batch: dict[str, Any]) -> None:
        status = batch["status"]
        refused = [{"code": "invalid_request", "line": n,
                    "message": f"Line {n}: the request body is not valid."}
                   for n, item in enumerate(self._lines(batch), start=1)
                   if "[[refuse_line]]" in json.dumps(item.get("body"))]
        if status == "validating" and (refused or self.state.settings["end"] == "failed"):
            self._finish(batch, "failed")
            batch["errors"] = {"object": "list", "data": [
                {"code": e.get("code"), "message": e.get("message"), "param": None,
                 "line": e.get("line")} for e in refused or self.state.settings.get("errors")
                or [{"code": "invalid_request",
                     "message": "The input file is not valid for this endpoint."}]]}
        elif status in STEPS[:-1]:
            batch["status"] = STEPS[STEPS.index(status) + 1]
            if batch["status"] == "in_progress":
                lines = self._lines(batch)
                batch["request_counts"]["total"] = len(lines)
        elif status in ("finalizing", "cancelling"):
            end = "cancelled" if status == "cancelling" else self.state.settings["end"]
            self._finish(batch, end)

    def _lines(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        data = self.state.files[batch["input_file_id"]]["data"]
        return [json.loads(x) for x in data.splitlines() if x.strip()]

    def _finish(self, batch: dict[str, Any], end: str) -> None:
        lines = self._lines(batch)
        answer = len(lines) if end == "completed" else int(self.state.settings.get("answer", 0))
        if end == "failed":
            answer = 0
        out: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for item in lines[:answer]:
            line = self._answer(batch, item)
            (out if line["response"]["status_code"] == 200 else errors).append(line)
        for name, rows in (("output_file_id", out), ("error_file_id", errors)):
            if rows:
                file_id = f"file-batch-out-{uuid.uuid4().hex[:12]}"
                data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
                self.state.files[file_id] = {"id": file_id, "object": "file", "bytes": len(data),
                                             "created_at": int(time.time()),
                                             "filename": f"{name}.jsonl",
                                             "purpose": "batch_output", "status": "processed",
                                             "data": data}
                batch[name] = file_id
        batch["status"] = end
        batch["request_counts"] = {"total": len(lines), "completed": len(out),
                                   "failed": len(errors)}
        self.state.events.append(["end", batch["id"], end])

    def _answer(self, batch: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
        body = item["body"]
        key = request_key(body)
        with self.lock:
            attempt = self.ledger.attempts.get(key, 0) + 1
            self.ledger.attempts[key] = attempt
        plan = plan_for(body, attempt, self.config)
        rid = f"batch_req_{uuid.uuid4().hex[:12]}"
        fault = plan.fault.partition("@")[0].partition(":")[0]
        if fault in ("400", "404", "413", "429", "500", "502", "503", "504", "inspect"):
            status = 400 if fault in ("404", "413", "inspect") else int(fault)
            code = {"400": "invalid_parameter_error", "inspect": "data_inspection_failed",
                    "429": "limit_requests"}.get(fault, "internal_error")
            with self.lock:
                self.ledger.entries.append({"key": key, "attempt": attempt, "model": plan.model,
                                            "fault": plan.fault, "status": status,
                                            "prompt_tokens": 0, "completion_tokens": 0,
                                            "complete": False, "via": "batch",
                                            "batch": batch["id"], "body": body,
                                            "continued": None})
            return {"id": rid, "custom_id": item["custom_id"], "response": {
                "status_code": status, "request_id": str(uuid.uuid4()),
                "body": {"error": {"code": code, "message": f"fake {fault}",
                                   "type": "invalid_request_error"}}}, "error": None}
        content = "".join(plan.tokens)
        completion = len(plan.tokens) + len(plan.reasoning)
        usage: dict[str, Any] = {"prompt_tokens": plan.prompt_tokens,
                                 "completion_tokens": completion,
                                 "total_tokens": plan.prompt_tokens + completion}
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if plan.reasoning:
            message["reasoning_content"] = "".join(plan.reasoning)
            usage["completion_tokens_details"] = {"reasoning_tokens": len(plan.reasoning)}
        with self.lock:
            self.ledger.entries.append({"key": key, "attempt": attempt, "model": plan.model,
                                        "fault": plan.fault, "status": 200,
                                        "prompt_tokens": plan.prompt_tokens,
                                        "completion_tokens": completion, "complete": True,
                                        "via": "batch", "batch": batch["id"], "body": body,
                                        "continued": None})
        return {"id": rid, "custom_id": item["custom_id"], "response": {
            "status_code": 200, "request_id": str(uuid.uuid4()), "body": {
                "id": f"chatcmpl-{uuid.uuid4()}", "object": "chat.completion",
                "created": int(time.time()), "model": plan.model,
                "choices": [{"index": 0, "message": message, "finish_reason":
                             plan.finish_reason}], "usage": usage}}, "error": None}


def _public(file: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in file.items() if k != "data"}
