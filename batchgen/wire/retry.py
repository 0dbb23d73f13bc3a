"""Error classification and the retry policy (the only place retries live).

Every failure of an attempt becomes exactly one of:

- :class:`TransientError` — retried with back-off: HTTP 408, 409, 429, 5xx (529
  too), connection refused / reset / dropped mid-stream, no bytes for
  ``idle_timeout`` seconds, a stream that ended before its ``finish_reason``, a
  chunk that is not JSON, a mid-stream error event with a transient code;
- :class:`RequestFatalError` / :class:`ModerationError` — this request fails,
  the run goes on: other 4xx, content moderation;
- :class:`RunFatalError` — the run stops: bad key, access denied, arrears,
  quota used up for good.

The transport retries nothing itself (nor does the Batch API's SDK client:
``max_retries=0``). tenacity drives a request's later attempts
(:mod:`batchgen.wire.policy`, with :func:`backoff`'s waits).
"""

from __future__ import annotations

import email.utils
import html
import json
import math
import random
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from batchgen.errors import (
    AttemptError,
    ModerationError,
    RequestFatalError,
    RunFatalError,
    TransientError,
)
from batchgen.secrets import printable

THROTTLE_FACTOR = 4
BACKOFF_BASE = 1.0
BACKOFF_CAP = 30.0
RETRY_AFTER_CAP = 300.0

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
# A server that does not do what was asked (a static file server, a wrong
# port): the same answer every time, so not retried
NEVER_RETRY_STATUS = frozenset({501, 505})
MODERATION_CODES = frozenset(
    {"data_inspection_failed", "datainspectionfailed", "content_filter", "content_policy_violation"}
)
RUN_FATAL_CODES = frozenset(
    {"invalid_api_key", "invalidapikey", "arrearage", "accessdenied", "access_denied",
     "accessdenied.unpurchased", "account_deactivated", "billing_not_active"}
)
_QUOTA_GONE = re.compile(
    r"free (tier|quota)|balance|billing|plan|exhausted|used up|arrear|insufficient (funds|balance)",
    re.I,
)

Redact = Callable[[str], str]


def _no_redact(text: str) -> str:
    return text


def parse_error_body(body: object) -> tuple[str | None, str | None, str | None]:
    """(code, message, type) from an error body in any of the shapes servers send.

    An error answer's body, a mid-stream ``error`` object, or raw text when the
    body was not JSON — DashScope's moderation 400 arrives as ``data: {...}`` text.
    """
    if isinstance(body, str | bytes):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        text = text.strip()
        if text.startswith("data:"):
            text = text[5:].strip()
        try:
            body = json.loads(text)
        except ValueError:
            return None, one_line(text)[:500] or None, None
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        body = body["error"]
    if not isinstance(body, Mapping):
        return None, None, None
    code = body.get("code")
    message = body.get("message")
    kind = body.get("type")
    return (
        str(code) if code not in (None, "") else None,
        str(message) if message not in (None, "") else None,
        str(kind) if kind not in (None, "") else None,
    )


_MARKUP = re.compile(r"<(script|style)\b.*?</\1\s*>|<!--.*?-->|<[^>]*>", re.S | re.I)


def one_line(text: str) -> str:
    """A body that is not JSON as one line of what it says: an HTML page (a
    proxy's, a web server's at a wrong base URL) by its visible text, marked
    as a page; white space runs as one space."""
    if text.lstrip()[:1] == "<":
        text = "an HTML page: " + html.unescape(_MARKUP.sub(" ", text))
    return " ".join(text.split())


def retry_after_seconds(
    headers: Mapping[str, str] | None, now: float | None = None
) -> float | None:
    """Seconds the server asked us to wait (``retry-after-ms``, ``retry-after``), capped."""
    if not headers:
        return None
    value: float | None = None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            value = float(ms) / 1000.0
        except ValueError:
            value = None
    ra = headers.get("retry-after")
    if value is None and ra:
        try:
            value = float(ra)
        except ValueError:
            try:
                parsed = email.utils.parsedate_to_datetime(ra)
                value = parsed.timestamp() - (time.time() if now is None else now)
            except (TypeError, ValueError, OverflowError):
                value = None  # neither seconds nor a date ("1.5s"): ignored, not fatal
    if value is None or math.isnan(value):
        return None
    return max(0.0, min(value, RETRY_AFTER_CAP))


def from_payload(
    status: int | None,
    body: object,
    *,
    headers: Mapping[str, str] | None = None,
    request_id: str | None = None,
    redact: Redact = _no_redact,
) -> AttemptError:
    """Classify an HTTP error reply or a mid-stream error event."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        body = redact(body)  # before the text is cut short: half a key would get through
    code, message, kind = parse_error_body(body)
    low = {(code or "").lower(), (kind or "").lower()}
    text = redact(printable(message or (f"HTTP {status}" if status else
                                        "error event in the stream")))
    code = printable(code) if code else code
    fields: dict[str, Any] = {
        "http_status": status,
        "code": code or kind,
        "provider_request_id": request_id,
        "retry_after": retry_after_seconds(headers),
    }
    if low & MODERATION_CODES:
        return ModerationError(text, **fields)
    if "insufficient_quota" in low:
        if _QUOTA_GONE.search(message or ""):
            return RunFatalError(text, error_class="quota_exhausted", **fields)
        return TransientError(text, error_class="rate_limited", **fields)
    if status == 407:  # only a proxy says this, and it says it to every request
        return RunFatalError(
            f"{text}: a proxy between batchgen and the endpoint wants credentials; put "
            "them in the proxy variable's URL (http_proxy=http://user:password@host:port)",
            error_class="proxy_auth", **fields)
    if status in (401, 403) or low & RUN_FATAL_CODES:
        label = "auth" if status == 401 or "invalid_api_key" in low else "access_denied"
        if "arrearage" in low:
            label = "arrearage"
        return RunFatalError(text, error_class=label, **fields)
    if status is None:  # an error event mid-stream
        said = _status_in_body(body)
        if said is not None and 400 <= said < 500 and said not in RETRY_STATUS:
            # the body says what HTTP would have: this request is refused as written
            return RequestFatalError(text, error_class=f"http_{said}", **fields)
        return TransientError(text, error_class="error_event", **fields)
    if 300 <= status < 400:
        target = (headers or {}).get("location") or "another address"
        return RequestFatalError(
            redact(printable(f"the server redirected (HTTP {status}) to {target}; batchgen "
                             "does not follow redirects for API calls: set base_url to the "
                             "address that answers")),
            error_class="redirect", **fields)
    if status in RETRY_STATUS or (status >= 500 and status not in NEVER_RETRY_STATUS):
        label = {429: "rate_limited", 408: "timeout", 409: "conflict"}.get(status, "server_error")
        return TransientError(text, error_class=label, **fields)
    return RequestFatalError(text, error_class=f"http_{status}", **fields)


def _status_in_body(body: object) -> int | None:
    """An HTTP status an error event carries (``status_code``, ``status`` or a
    numeric ``code``, as OpenRouter and Groq send), if any."""
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        body = body["error"]
    if not isinstance(body, Mapping):
        return None
    for key in ("status_code", "status", "code"):
        value = body.get(key)
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
            return value
    return None


def _mro_names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def _transport_text(exc: BaseException, root: BaseException) -> str:
    """What went wrong, in the original error's words where it has any: the
    SDK's aiohttp transport turns a refused connection into a ConnectTimeout
    ("Request timed out."), where aiohttp said "Cannot connect to host ..."."""
    if root is not exc and str(root).strip():
        return f"{type(root).__name__}: {root}"
    return str(exc) or type(exc).__name__


def _root(exc: BaseException) -> BaseException:
    """The original error: transports re-raise their own under another name
    (aiohttp's ServerDisconnectedError arrives as httpx's ConnectTimeout)."""
    seen = 0
    while exc.__cause__ is not None and seen < 10:
        exc = exc.__cause__
        seen += 1
    return exc


CONNECT_TIMEOUTS = frozenset({"ConnectionTimeoutError", "ConnectTimeout"})
TIMEOUTS = frozenset({"APITimeoutError", "TimeoutException", "ReadTimeout", "TimeoutError",
                      "SocketTimeoutError", "ServerTimeoutError"})
TRANSPORT_ERRORS = frozenset({"APIConnectionError", "TransportError", "ConnectionError", "OSError",
                              "ClientError", "HTTPError"})


def classify(exc: BaseException, *, redact: Redact = _no_redact) -> AttemptError:
    """Turn anything an attempt raised into exactly one :class:`AttemptError`."""
    if isinstance(exc, AttemptError):
        return exc
    names = _mro_names(exc)
    if "APIStatusError" in names:
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
        return from_payload(
            getattr(exc, "status_code", None),
            getattr(exc, "body", None),
            headers=headers,
            request_id=getattr(exc, "request_id", None),
            redact=redact,
        )
    # openai wraps errors raised before a response; transport errors raised
    # while reading the body reach us unwrapped. They are matched by class name
    # (of the original error first), so httpx, httpx2 and aiohttp are understood.
    root = _root(exc)
    text = redact(printable(_transport_text(exc, root)))
    for kinds in (_mro_names(root), names):
        if kinds & CONNECT_TIMEOUTS:
            return TransientError(text, error_class="connect_timeout")
        if kinds & TIMEOUTS:
            return TransientError(text, error_class="idle_timeout")
        if kinds & TRANSPORT_ERRORS:
            return TransientError(text, error_class="connection")
    return RequestFatalError(
        redact(printable(f"{type(exc).__name__}: {exc}")), error_class="internal_error"
    )


def backoff(attempt: int, retry_after: float | None, rng: random.Random) -> float:
    """Full-jitter exponential back-off, never shorter than the server asked."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** max(0, attempt - 1))
    delay = rng.uniform(0, ceiling)
    if retry_after is not None:
        delay = retry_after + rng.uniform(0, min(1.0, retry_after * 0.1 + 0.1))
    return delay
