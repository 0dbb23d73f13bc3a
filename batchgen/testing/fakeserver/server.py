"""The fake API: routing, the billing ledger, limits, faults, streams (the
HTTP/1.1 framing is ``http11.py``)."""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import math
import resource
import threading
import time
import uuid
from email.utils import formatdate
from typing import Any

from batchgen.testing.fakeserver import hostile, http11
from batchgen.testing.fakeserver.batches import BatchAPI
from batchgen.testing.fakeserver.media import media_problem
from batchgen.testing.fakeserver.plan import (
    SPEECH_TOKENS,
    Config,
    Ledger,
    Plan,
    plan_for,
    request_key,
    speech_pcm,
)


class FakeServer:
    """Serve until stopped. ``start_in_thread()`` for in-process tests."""

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self.ledger = Ledger()
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._window: collections.deque[tuple[float, int]] = collections.deque()
        self._tick_streams: set[asyncio.Queue[None]] = set()
        self._lock = threading.Lock()
        self.batches = BatchAPI(self.config, self.ledger, self._lock)

    # ------------------------------------------------------------ lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._handle, host, port, backlog=4096)
        self.port = self._server.sockets[0].getsockname()[1]
        if self.config.tick:
            self._loop.create_task(self._ticker(self.config.tick))
        return self.port

    def start_in_thread(self) -> int:
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
                ready.set()
                loop.run_forever()
            finally:  # a loop left open is closed by the collector, late and noisily
                loop.close()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self.port

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            loop.stop()

        if self._thread is not None:
            asyncio.run_coroutine_threadsafe(shutdown(), loop)
            self._thread.join(5)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/compatible-mode/v1"

    # ------------------------------------------------------------- serving

    async def _ticker(self, interval: float) -> None:
        """One chunk per stream every ``interval`` s, on absolute deadlines (no drift)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            deadline += interval
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            for queue in list(self._tick_streams):
                queue.put_nowait(None)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await http11.read_request(reader)
                if request is None:
                    return
                received = time.monotonic()
                method, path, headers, raw = request
                keep = await self._route(method, path, headers, raw, writer, received,
                                         gone=reader.at_eof)
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            if not writer.is_closing():
                writer.close()

    async def _route(self, method: str, path: str, headers: dict[str, str], raw: bytes,
                     writer: asyncio.StreamWriter, received: float = 0.0,
                     gone: Any = None) -> bool:
        if path.startswith("/_control/"):
            return await self._control(method, path, raw, writer)
        if method == "GET" and path == "/health":  # as llama-server answers once loaded
            await http11.send_json(writer, 200, {"status": "ok"})
            return True
        if self.batches.handles(path):
            status, answer, data = await self.batches.route(method, path, headers, raw,
                                                            gone=gone)
            if data is not None:
                await http11.send(writer, status, data, "application/octet-stream")
            else:
                await http11.send_json(writer, status, answer)
            return True
        if method != "POST" or not path.rstrip("/").endswith("/chat/completions"):
            await http11.send_json(writer, 404, {"error": {
                "message": "not found", "type": "not_found", "code": "not_found",
                "param": None}})
            return True
        auth = headers.get("authorization", "")
        with self._lock:
            self.ledger.requests += 1
            self.ledger.keys_seen.add(auth.removeprefix("Bearer ").strip())
        if self.config.down is not None or self.config.down_for > 0:
            with self._lock:
                self.config.down_for = max(0, self.config.down_for - 1)
            status = self.config.down or 503
            await http11.send_error(writer, status, "ServiceUnavailable",
                              "the service is temporarily unavailable (fake outage)",
                              "server_error")
            return True
        if self.config.api_key is not None and auth != f"Bearer {self.config.api_key}":
            await http11.send_error(writer, 401, "invalid_api_key", "Incorrect API key provided. ",
                              "invalid_request_error")
            return True
        body = json.loads(raw)
        bad_media = media_problem(body)
        if bad_media is not None:  # as Model Studio answers a malformed data URL
            with self._lock:
                self.ledger.entries.append({"key": request_key(body), "attempt": 0,
                                            "status": 400, "prompt_tokens": 0,
                                            "completion_tokens": 0, "complete": False,
                                            "body": body, "media_error": bad_media})
            await http11.send_error(writer, 400, "InvalidParameter", bad_media,
                              "invalid_request_error")
            return True
        key = request_key(body)
        with self._lock:
            attempt = self.ledger.attempts.get(key, 0) + 1
            self.ledger.attempts[key] = attempt
        plan = plan_for(body, attempt, self.config)
        entry: dict[str, Any] = {"key": key, "attempt": attempt, "model": plan.model,
                                 "fault": plan.fault, "status": 200, "prompt_tokens": 0,
                                 "completion_tokens": 0, "complete": False,
                                 "stream": bool(body.get("stream")),
                                 "include_usage": bool((body.get("stream_options") or {})
                                                       .get("include_usage")),
                                 "body": body, "headers": headers, "received": received,
                                 "continued": plan.continued}
        with self._lock:
            self.ledger.entries.append(entry)
        if self._throttled(plan):
            entry["status"] = 429
            with self._lock:
                self.ledger.throttled += 1
            await http11.send_error(writer, 429, "limit_requests",
                              "Requests rate limit exceeded, please try again later.",
                              "limit_requests", extra_headers={"Retry-After": "1"})
            return True
        return await self._reply(plan, entry, writer, auth.removeprefix("Bearer "))

    def _throttled(self, plan: Plan) -> bool:
        cfg = self.config
        if not cfg.rpm and not cfg.tpm:
            return False
        now = time.monotonic()
        cost = plan.prompt_tokens + len(plan.tokens) + len(plan.reasoning)
        with self._lock:
            while self._window and self._window[0][0] <= now - 60.0:
                self._window.popleft()
            last_second = [c for t, c in reversed(self._window) if t > now - 1.0]
            # per minute, and per second at a 60th of it, as Model Studio enforces
            if cfg.rpm and (len(self._window) + 1 > cfg.rpm
                            or len(last_second) + 1 > math.ceil(cfg.rpm / 60)):
                return True
            if cfg.tpm and (sum(c for _, c in self._window) + cost > cfg.tpm
                            or sum(last_second) + cost > cfg.tpm / 60):
                return True
            self._window.append((now, cost))
        return False

    async def _reply(self, plan: Plan, entry: dict[str, Any], writer: asyncio.StreamWriter,
                     key: str) -> bool:
        fault = plan.fault
        name, _, arg = fault.partition("@")
        status_faults = {"408", "409", "500", "502", "503", "504", "529", "400", "404", "413",
                         "501", "505"}
        if name.partition(":")[0] in hostile.FAULTS:
            return await hostile.reply(fault, plan.tokens, plan.headers, writer, entry)
        if fault == "reset":
            entry["status"] = 0
            writer.transport.abort()
            return False
        if name.startswith("429"):
            entry["status"] = 429
            extra: dict[str, str] = {}
            opts = dict(o.split("=") for o in name.split(":")[1:])
            if "ra" in opts:
                extra["Retry-After"] = opts["ra"]
            if "date" in opts:
                extra["Retry-After"] = formatdate(time.time() + float(opts["date"]), usegmt=True)
            if "ms" in opts:
                extra["retry-after-ms"] = opts["ms"]
            await http11.send_error(writer, 429, "limit_requests",
                              "Requests rate limit exceeded, please try again later.",
                              "limit_requests", extra_headers={**extra, **plan.headers})
            return True
        if name in status_faults:
            entry["status"] = int(name)
            code = {"400": "invalid_parameter_error", "404": "model_not_found",
                    "413": "request_too_large", "501": "not_implemented",
                    "505": "http_version_not_supported"}.get(name, "internal_error")
            await http11.send_error(writer, int(name), code, f"fake {name}", code,
                              extra_headers=plan.headers)
            return True
        if fault == "inspect":
            entry["status"] = 400
            payload = {"error": {"code": "data_inspection_failed", "param": None,
                                 "message": "Input data may contain inappropriate content.",
                                 "type": "data_inspection_failed"},
                       "id": f"chatcmpl-{uuid.uuid4()}", "request_id": str(uuid.uuid4())}
            await http11.send(writer, 400, b"data: " + json.dumps(payload).encode() + b"\n\n",
                            "text/event-stream;charset=UTF-8")
            return True
        if fault == "refuse_continuation":
            entry["status"] = 400
            await http11.send_error(writer, 400, "invalid_parameter_error",
                              "partial mode is not supported for this model or mode",
                              "invalid_request_error")
            return True
        if fault in ("401", "403", "arrearage", "quota"):
            entry["status"] = {"401": 401, "403": 403, "arrearage": 400, "quota": 429}[fault]
            code, msg = {
                # some servers echo the key they were sent: batchgen must scrub it
                "401": ("invalid_api_key", f"Incorrect API key provided: {key}"),
                "403": ("AccessDenied", "Access denied."),
                "arrearage": ("Arrearage",
                              "Access denied, please make sure your account is in good standing."),
                "quota": ("insufficient_quota",
                          "You exceeded your current quota: the free quota is used up."),
            }[fault]
            await http11.send_error(writer, entry["status"], code, msg, code)
            return True
        if plan.replay:
            return await self._replay(plan.replay, entry, writer)
        if not entry["stream"]:
            return await self._whole(plan, entry, writer)
        return await self._stream(plan, entry, writer, name, arg)

    async def _whole(self, plan: Plan, entry: dict[str, Any], writer: asyncio.StreamWriter
                     ) -> bool:
        """A non-streamed answer: one JSON body once the whole answer is "generated"."""
        entry["prompt_tokens"] = plan.prompt_tokens
        entry["started"] = time.monotonic()
        await asyncio.sleep(len(plan.tokens) * (self.config.tick or plan.delay))
        completion = len(plan.tokens) + len(plan.reasoning)
        message: dict[str, Any] = {"role": "assistant", "content": plan.echo + "".join(plan.tokens)}
        if plan.reasoning:
            message["reasoning_content"] = "".join(plan.reasoning)
        entry["completion_tokens"] = completion
        entry["complete"] = True
        entry["ended"] = time.monotonic()
        await http11.send_json(writer, 200, {
            "id": f"chatcmpl-{uuid.uuid4()}", "object": "chat.completion",
            "created": int(time.time()), "model": plan.model, "system_fingerprint": None,
            "choices": [{"index": 0, "message": message, "finish_reason": plan.finish_reason,
                         "logprobs": None}],
            "usage": {"prompt_tokens": plan.prompt_tokens, "completion_tokens": completion,
                      "total_tokens": plan.prompt_tokens + completion}})
        return True

    async def _replay(self, case: str, entry: dict[str, Any],
                      writer: asyncio.StreamWriter) -> bool:
        """Play a recorded provider stream byte for byte (tests/replay.py)."""
        from batchgen.testing import replay

        ctype = replay.sidecar(case).get("content_type", "text/event-stream")
        writer.write(
            f"HTTP/1.1 200 OK\r\ncontent-type: {ctype}\r\ntransfer-encoding: chunked\r\n"
            f"x-request-id: {uuid.uuid4()}\r\n\r\n".encode())
        for piece in replay.fragments(case):
            writer.write(http11.chunked(piece))
            await writer.drain()
        entry["complete"] = True
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    async def _stream(self, plan: Plan, entry: dict[str, Any], writer: asyncio.StreamWriter,
                      fault: str, arg: str) -> bool:
        rid = f"chatcmpl-{uuid.uuid4()}"
        created = int(time.time())
        tail = (f',"object":"chat.completion.chunk","usage":null,"created":{created},'
                f'"system_fingerprint":null,"model":{json.dumps(plan.model)},"id":"{rid}"}}')
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream;charset=UTF-8\r\n"
            b"transfer-encoding: chunked\r\nconnection: keep-alive\r\n"
            + f"x-request-id: {uuid.uuid4()}\r\n".encode()
            + "".join(f"{k}: {v}\r\n" for k, v in plan.headers.items()).encode()
            + b"\r\n"
        )
        entry["prompt_tokens"] = plan.prompt_tokens
        entry["started"] = time.monotonic()
        events: list[tuple[str, bytes]] = []
        first = ('data: {"choices":[{"delta":{"content":' +
                 ('null,"role":"assistant","reasoning_content":""' if plan.reasoning
                  else '"","role":"assistant"') +
                 '},"index":0,"logprobs":null,"finish_reason":null}]' + tail + "\n\n")
        events.append(("meta", first.encode()))
        for piece in plan.reasoning:
            events.append(("token", (
                'data: {"choices":[{"delta":{"content":null,"reasoning_content":'
                + json.dumps(piece, ensure_ascii=False)
                + '},"finish_reason":null,"index":0,"logprobs":null}]' + tail + "\n\n").encode()))
        audio_id = f"audio_{uuid.uuid4().hex[:16]}"
        for i, piece in enumerate(plan.tokens):
            said = plan.echo + piece if i == 0 else piece  # llama-server echoes a prefill
            events.append(("token", (
                'data: {"choices":[{"delta":{"content":' + json.dumps(said, ensure_ascii=False)
                + '},"finish_reason":null,"index":0,"logprobs":null}]' + tail + "\n\n").encode()))
            if plan.speech:  # Qwen-Omni: the speech follows the text, in its own chunks
                speech = base64.b64encode(speech_pcm(piece, i)).decode()
                events.append(("audio", (
                    '{"choices":[{"delta":{"audio":{"data":"' + speech + '","expires_at":'
                    f'{created + 3600},"id":"{audio_id}"}}}},"finish_reason":null,"index":0,'
                    '"logprobs":null}]').join(("data: ", tail + "\n\n")).encode()))
        events.append(("finish", (
            'data: {"choices":[{"finish_reason":"' + plan.finish_reason
            + '","delta":{"content":""},"index":0,"logprobs":null}]' + tail + "\n\n").encode()))
        completion = len(plan.tokens) + len(plan.reasoning)
        usage: dict[str, Any] = {"prompt_tokens": plan.prompt_tokens,
                                 "completion_tokens": completion,
                                 "total_tokens": plan.prompt_tokens + completion,
                                 "prompt_tokens_details": {"cached_tokens": 0}}
        if plan.reasoning:
            usage["completion_tokens_details"] = {"reasoning_tokens": len(plan.reasoning)}
        if plan.speech:  # Model Studio counts the speech apart, in its own tokens
            spoken = len(plan.tokens) * SPEECH_TOKENS
            usage["completion_tokens"] += spoken
            usage["total_tokens"] += spoken
            usage["completion_tokens_details"] = {"audio_tokens": spoken,
                                                  "text_tokens": len(plan.tokens)}
        usage_tail = tail.replace('"usage":null', '"usage":' + json.dumps(usage,
                                                                            separators=(",", ":")))
        if fault not in ("nousage", "mute") and entry["include_usage"]:
            events.append(("usage", ('data: {"choices":[]' + usage_tail + "\n\n").encode()))
        if fault not in ("nodone", "hang", "mute"):
            events.append(("done", b"data: [DONE]\n\n"))
        n_arg = int(arg.split(":", maxsplit=1)[0]) if arg else 0
        queue: asyncio.Queue[None] | None = None
        if self.config.tick and plan.delay == self.config.delay:
            queue = asyncio.Queue()
            self._tick_streams.add(queue)
        sent_chunks = 0
        try:
            for kind, data in events:
                if kind == "token":
                    if fault == "cut" and sent_chunks >= n_arg:
                        writer.transport.abort()
                        return False
                    if fault == "stall" and sent_chunks == n_arg:
                        await writer.drain()
                        await asyncio.sleep(float(arg.split(":")[1]))
                    if fault in ("errevent", "inspect") and sent_chunks >= n_arg:
                        await self._error_event(writer, fault)
                        return False
                    if fault == "badjson" and sent_chunks == n_arg:
                        writer.write(http11.chunked(
                            b'data: {"choices":[{"delta":{"content":"x"\n\n'))
                    if queue is not None:
                        await queue.get()
                    elif plan.delay:
                        await asyncio.sleep(plan.delay)
                    sent_chunks += 1
                    entry["completion_tokens"] += 1
                if kind == "usage":
                    entry["complete"] = True
                writer.write(http11.chunked(data))
                if kind == "token" and (queue is None or sent_chunks % 8 == 0):
                    await writer.drain()
            entry["complete"] = True
            entry["ended"] = time.monotonic()
            if fault in ("hang", "mute"):
                await writer.drain()
                await asyncio.sleep(3600)
            if fault == "nodone":
                await writer.drain()
                writer.transport.abort()
                return False
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return True
        finally:
            if queue is not None:
                self._tick_streams.discard(queue)

    async def _error_event(self, writer: asyncio.StreamWriter, fault: str) -> None:
        if fault == "inspect":
            err = {"code": "data_inspection_failed", "param": None,
                   "message": "Output data may contain inappropriate content.",
                   "type": "data_inspection_failed"}
        else:
            err = {"code": "internal_error", "param": None,
                   "message": "An internal error has occured, please try again later.",
                   "type": "internal_error"}
        payload = {"error": err, "request_id": str(uuid.uuid4())}
        writer.write(http11.chunked(b"data: " + json.dumps(payload).encode() + b"\n\n"))
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    async def _control(self, method: str, path: str, raw: bytes,
                       writer: asyncio.StreamWriter) -> bool:
        if path == "/_control/ledger":
            with self._lock:
                entries = [{k: v for k, v in e.items() if k != "body"}
                           for e in self.ledger.entries]
                data = {"entries": entries, "requests": self.ledger.requests,
                        "throttled": self.ledger.throttled}
            await http11.send_json(writer, 200, data)
        elif path == "/_control/stats":
            usage = resource.getrusage(resource.RUSAGE_SELF)
            await http11.send_json(writer, 200, {"cpu": usage.ru_utime + usage.ru_stime,
                                           "requests": self.ledger.requests,
                                           "throttled": self.ledger.throttled})
        elif path == "/_control/config" and method == "POST":
            for k, v in json.loads(raw).items():
                setattr(self.config, k, v)
            await http11.send_json(writer, 200, {"ok": True})
        elif path == "/_control/reset" and method == "POST":
            with self._lock:
                self.ledger = Ledger()
                self._window.clear()
                self.batches.ledger = self.ledger
            await http11.send_json(writer, 200, {"ok": True})
        elif path == "/_control/batch" and method == "POST":
            self.batches.state.settings.update(json.loads(raw))
            await http11.send_json(writer, 200, {"ok": True})
        elif path == "/_control/batches":
            state = self.batches.state
            await http11.send_json(writer, 200, {"events": state.events,
                                           "batches": [state.batches[i] for i in state.order]})
        else:
            await http11.send_json(writer, 404, {"error": "no such control"})
        return True
