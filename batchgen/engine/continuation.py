"""Continuing an interrupted answer from the text already on disk.

When a run is killed, or a stream drops and is retried, the answer so far is
in the run store. Where the endpoint can continue an assistant message, the
next attempt sends that text back and asks only for the rest, so the model
neither generates nor bills the same text twice. How the text goes back
depends on the endpoint (``endpoint.continuation``):

=========================  ==========================================================
``partial``                Model Studio (DashScope): a last message
                           ``{"role": "assistant", "content": TEXT, "partial": true}``
``prefix``                 DeepSeek (its ``/beta`` base URL): the same with
                           ``"prefix": true``
``continue_final_message`` vLLM: a trailing assistant message, and
                           ``continue_final_message: true,
                           add_generation_prompt: false`` in the body
``prefill``                llama.cpp's server and others that continue a trailing
                           assistant message as is; llama-server echoes the prefix
                           at the start of its first delta (:class:`EchoFilter`)
``none``                   every retry starts over
=========================  ==========================================================

The default follows the endpoint (:func:`batchgen.jobs.endpoints.detect`). A request is continued
only when nothing about it forbids it (:func:`refusal`): not with thinking on
(Model Studio refuses partial mode then), not with tools, not with ``n > 1``,
not when its own messages already end with an assistant message, and not
from an attempt that produced reasoning. ``max_tokens`` (or
``max_completion_tokens``) stays the limit of the whole answer: a
continuation asks for what is left, at least 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from batchgen.jobs.thinking import thinks
from batchgen.store.records import ESTIMATED, Resume

if TYPE_CHECKING:
    from batchgen.store.reads import StoreReads

# Attempts whose text is a sound start: stopped by us, or by a passing fault.
CONTINUABLE = frozenset({
    "interrupted", "connection", "connect_timeout", "idle_timeout", "max_duration",
    "incomplete_stream",
    "malformed_chunk", "error_event", "server_error", "timeout", "conflict", "rate_limited",
    "oversized_event",
    "length",  # a segment cut at the output cap, with run.on_length: continue
})


def refusal(body: dict[str, Any]) -> str | None:
    """Why this request must start fresh after an interruption, or None."""
    if thinks(body):
        return "thinking"
    if body.get("tools") or (body.get("extra_body") or {}).get("tools"):
        return "tools"
    if (body.get("n") or 1) > 1:
        return "n > 1"
    if "audio" in (body.get("modalities") or []):
        return "speech (audio cannot be continued)"
    messages = body.get("messages") or []
    if messages and messages[-1].get("role") == "assistant":
        return "its messages end with an assistant message"
    return None


def remaining_tokens(body: dict[str, Any], done: int) -> dict[str, int]:
    """The output limit of a continuation: what is left of the whole answer's."""
    out = {}
    for key in ("max_tokens", "max_completion_tokens"):
        limit = body.get(key)
        if isinstance(limit, int):
            out[key] = max(1, limit - done)
    return out


def segment_tokens(body: dict[str, Any], done: int, total: int | None) -> dict[str, int]:
    """The output limit of a segment with ``run.on_length: continue``: a whole
    ``max_tokens`` again, but no more than ``run.max_total_tokens`` leaves."""
    out = {}
    for key in ("max_tokens", "max_completion_tokens"):
        limit = body.get(key)
        if isinstance(limit, int):
            out[key] = max(1, min(limit, total - done) if total is not None else limit)
    return out


def continue_body(body: dict[str, Any], text: str, form: str, done_tokens: int,
                  limits: dict[str, int] | None = None) -> dict[str, Any]:
    """The request that continues ``text`` (the answer so far) in ``form``;
    ``limits`` in place of what is left of the whole answer's (segments)."""
    message: dict[str, Any] = {"role": "assistant", "content": text}
    extra = dict(body.get("extra_body") or {})
    if form == "partial":
        message["partial"] = True
    elif form == "prefix":
        message["prefix"] = True
    elif form == "continue_final_message":
        extra.update(continue_final_message=True, add_generation_prompt=False)
    out = {**body, "messages": [*body["messages"], message],
           **(remaining_tokens(body, done_tokens) if limits is None else limits)}
    if extra:
        out["extra_body"] = extra
    return out


OnText = Callable[[str, str], None]


class EchoFilter:
    """Drops the prefix a server repeats at the start of its continuation.

    llama-server answers a trailing assistant message ``"uno, dos,"`` with a
    first delta ``"uno, dos, t"``. The start of the stream is held until it is
    either longer than the prefix or cannot be an echo of it; an echo is cut,
    anything else passes unchanged.
    """

    def __init__(self, prefix: str, on_text: OnText) -> None:
        self.prefix = prefix
        self.on_text = on_text
        self.held = ""
        self.settled = not prefix
        self.echoed = False

    def __call__(self, content: str, reasoning: str) -> None:
        if self.settled or not content:
            self.on_text(content, reasoning)
            return
        self.held += content
        if len(self.held) < len(self.prefix) and self.prefix.startswith(self.held):
            if reasoning:
                self.on_text("", reasoning)
            return  # maybe the echo: wait for more
        self.settled = True
        out = self.held
        if out.startswith(self.prefix):
            out = out[len(self.prefix):]
            self.echoed = True
        self.held = ""
        if out or reasoning:
            self.on_text(out, reasoning)


def resumable(store: StoreReads, request_id: str, fingerprint: str,
          count_tokens: Callable[[str], int]) -> Resume | None:
    """The answer so far of an interrupted request, if it can go on from it.

    The last attempt (of this version of the request) decides: stopped by
    us or by a passing fault, with content and no reasoning; never after a
    continuation was refused. Its text is the chain of attempts it went on
    from. Tokens already generated are the attempts' usage (reported or
    estimated), or ``count_tokens`` of their text where none was recorded.
    """
    rows = store.attempt_chain(request_id, fingerprint)
    if not rows or any(r[4] == "continuation_refused" for r in rows):
        return None
    by_id = {r[0]: r for r in rows}
    last = next((r for r in reversed(rows) if r[3] != "streaming"), None)
    while last is not None and last[4] == "rate_limited" and last[5] is None:
        last = by_id.get(last[1]) if last[1] else None  # refused before any output
    if last is None or last[3] not in ("aborted", "error") or last[4] not in CONTINUABLE:
        return None
    pieces: list[str] = []
    unsure: list[str] = []  # the text of attempts whose tokens were estimated
    tokens = reported = 0
    node: tuple[Any, ...] | None = last
    while node is not None:
        content, reasoning = store.attempt_text(node[0])
        if reasoning:
            return None  # a thinking answer starts over
        pieces.append(content)
        if node[5] is not None and _reported(node[6], node[7]):
            reported += node[5]
            tokens += node[5]
        else:
            unsure.append(content)
            tokens += node[5] if node[5] is not None else count_tokens(content)
        node = by_id.get(node[1]) if node[1] else None
    text = "".join(reversed(pieces))
    if not text:
        return None
    return Resume(parent=last[0], text=text, tokens=tokens, depth=last[2] or 0,
                  reported=reported, estimated_text="".join(reversed(unsure)))


def _reported(method: str | None, estimated: int | None) -> bool:
    """Whether an attempt's completion tokens are the endpoint's own figure (a
    store from before schema 2 has no method: its ``estimated`` flag says)."""
    return method not in ESTIMATED if method is not None else not estimated
