"""A loopback fake of an OpenAI-compatible chat API, DashScope's wire format.

Byte for byte what Model Studio's compatible mode sends for a streamed call
with ``stream_options.include_usage``: content chunks (``"usage":null``), the
last content chunk with ``finish_reason`` and ``delta.content: ""``, then
``{"choices":[],...,"usage":{...}}``, then ``data: [DONE]``; QwQ-style chunks
carry ``reasoning_content`` while ``content`` is null. Error replies use the
``{"error": {...}, "request_id": ...}`` shape, and moderation's 400 arrives as
``data: {...}`` text.

Text is generated deterministically from the request, so two runs can be
compared byte for byte. Behaviour is scripted in the prompt text itself::

    [[len=40]]          40 content tokens (default: 16-48, from the hash)
    [[think=20]]        20 reasoning tokens first (QwQ / Qwen3 thinking)
    [[delay=0.01]]      seconds between chunks
    [[loop=300]]        from token 300 on, one 12-token sentence over and over
                        (a degenerate loop, to the answer's length)
    [[faults=429,cut@3,ok]]   what attempt 1, 2, 3 ... get (then ok)
    [[json=prose,violate,valid]]  an answer in JSON, of these kinds for attempt
                        1, 2, 3 ... (the last repeats): valid, fenced, violate
                        (an age that is text), invalid (cut off), prose (text
                        first), stall (whitespace) — ``plan.json_tokens``

Faults: ``429`` (``429:ra=2`` Retry-After seconds, ``429:date=2`` as an HTTP
date, ``429:ms=1500`` retry-after-ms), ``408 409 500 502 503 504 529``,
``400 404 413``, ``inspect`` (moderation 400 in ``data:`` form), ``401`` (its
message echoes the key it was sent, as some servers do),
``403``, ``arrearage``,  ``quota`` (insufficient_quota, free quota used up),
``reset`` (connection closed before headers), ``cut@N`` (closed after N
chunks), ``stall@N:S`` (silent for S seconds after N chunks), ``badjson@N``,
``errevent@N`` (transient error event after N chunks), ``inspect@N``
(moderation error event after N chunks), ``nodone`` (no ``[DONE]``, then
close), ``nousage`` (no usage chunk), ``hang`` (finish and usage, then
silence), ``mute`` (finish, then silence: no usage, no ``[DONE]``), ``ok``;
and a hostile server's faults (``batchgen/testing/fakeserver/hostile.py``:
redirects, escape sequences, bad content and usage, huge and gzip-bombed
events, endless keep-alives, odd headers). ``[[replay=CASE]]`` plays a
recorded provider stream (``batchgen/testing/replay.py``).

The whole endpoint can go down: ``Config.down`` (a status every chat request
gets while it is set) and ``Config.down_for`` (the next N chat requests get
503), also through ``POST /_control/config``.

The server keeps a billing ledger (``GET /_control/ledger``): per HTTP
request the prompt tokens and the completion tokens it actually sent, so cut
streams are billed for what they delivered, as Model Studio bills them.
Server-wide ``rpm`` / ``tpm`` limits answer 429 over a sliding minute and,
at a 60th of the limit, over a sliding second (Model Studio's per-second rule).

Run it alone: ``python -m batchgen.testing.fakeserver --port 0`` prints ``PORT <n>``.
"""

from batchgen.testing.fakeserver.plan import Config, Ledger, Plan, count_prompt_tokens, plan_for
from batchgen.testing.fakeserver.server import FakeServer

__all__ = ["Config", "FakeServer", "Ledger", "Plan", "count_prompt_tokens", "plan_for"]
