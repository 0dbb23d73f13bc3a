"""An outage is the endpoint's state, not a request's failure.

The run is in an outage when an attempt fails at the transport level before
any answer came (connection refused or reset, a name that does not resolve,
a TLS handshake or a connect that fails or times out), or when the last
:data:`STORM` attempts or more all got a server error (500, 502, 503, 504: a
gateway or a provider down) or no response at all within ``run.idle_timeout``
(an endpoint that takes connections and says nothing), for more than one
request — one request's own run of 503s or of silence is that request's. Then:

- no attempt starts but **one probe at a time**: the next request that asks
  (:meth:`Outage.admit`), a real one, so a probe that succeeds is useful work;
- probes go 1 s after the outage began, then at intervals doubling to 60 s;
- an attempt that fails while the outage holds does not count against its
  request's ``run.max_attempts`` (:meth:`Outage.failed` says so), and no request
  fails for good because of one;
- the first answer that is not a server error ends it;
- one that lasts longer than ``run.outage_timeout`` ends the run: waiting
  requests raise :class:`OutageTimeout` and stay pending (exit 69).

What stays request-fatal (a 400, a moderation refusal) or run-fatal (a bad
key) is not an outage. The clock and the sleep come in as parameters.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from batchgen.errors import AttemptError, TransientError

FIRST_PROBE = 1.0
MAX_INTERVAL = 60.0
STORM = 3  # server errors in a row (for 2 requests or more), no other answer between
STORM_STATUS = frozenset({500, 502, 503, 504})


class OutageTimeout(Exception):
    """The outage lasted longer than ``run.outage_timeout``: the run stops."""


@dataclass(frozen=True)
class OutageState:
    """What ``status`` and progress say of an outage."""

    since: float  # wall-clock seconds
    reason: str
    probes: int
    next_probe: float  # wall-clock seconds


def transport_failure(err: AttemptError, answered: bool) -> bool:
    """An attempt that reached no server: nothing is wrong with the request."""
    return (isinstance(err, TransientError) and not answered
            and err.http_status is None and err.error_class in ("connection", "connect_timeout"))


class Outage:
    """The endpoint's state for one run (one process)."""

    def __init__(self, *, timeout: float = 1800.0, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 on_change: Callable[[OutageState | None], None] | None = None) -> None:
        self.timeout = timeout
        self.clock = clock
        self.sleep = sleep
        self.on_change = on_change
        self.since: float | None = None
        self.reason = ""
        self.probes = 0
        self.interval = FIRST_PROBE
        self.next_probe = 0.0
        self._probing = False
        self._storm = 0  # server errors since the last other answer
        self._storm_requests: set[str] = set()  # ... and whose
        self._changed = asyncio.Event()

    @property
    def active(self) -> bool:
        return self.since is not None

    def state(self) -> OutageState | None:
        if self.since is None:
            return None
        return OutageState(self.since, self.reason, self.probes, self.next_probe)

    # ---------------------------------------------------------------- outcomes

    def failed(self, err: AttemptError, *, answered: bool, probe: bool,
               request: str = "") -> bool:
        """Record a failed attempt of ``request``; True when it is the outage's
        (it does not count against its request), False when it is the
        request's own."""
        answered = answered or err.http_status is not None
        silent = err.error_class == "idle_timeout" and not answered  # not even headers
        storm = (isinstance(err, TransientError) and err.http_status in STORM_STATUS) or silent
        if transport_failure(err, answered):
            self._begin(_reason(err))
        elif storm:
            self._storm += 1
            self._storm_requests.add(request)
            if self._storm >= STORM and len(self._storm_requests) > 1:
                self._begin("no response within run.idle_timeout (raise it if answers "
                            "are slow to begin)" if silent
                            else f"HTTP {err.http_status} from every answer")
        else:
            if answered:  # the endpoint answers: whatever this is, it is the request's
                self.answered()
            return False
        if probe and self.active:
            self._probe_failed()
        return self.active

    def answered(self) -> None:
        """An attempt got an answer that was not a server error (a success too)."""
        self._storm = 0
        self._storm_requests.clear()
        self._end()

    # ---------------------------------------------------------------- probing

    async def admit(self) -> bool:
        """Before an attempt: at once when the endpoint is up; during an
        outage, wait for this request's turn to probe. True when the attempt
        is a probe (call :meth:`release` after it). Raises :class:`OutageTimeout`
        once the outage has lasted ``timeout`` seconds."""
        while self.since is not None:
            now = self.clock()
            if now - self.since >= self.timeout:
                raise OutageTimeout(self.describe(ended=True))
            if not self._probing and now >= self.next_probe:
                self._probing = True
                self.probes += 1
                self._notify()
                return True
            self._changed.clear()
            if self._probing:  # a probe is out: its end (or the outage's) says what next
                await self._changed.wait()
                continue
            wait = min(self.next_probe - now, self.since + self.timeout - now)
            sleeper = asyncio.ensure_future(self.sleep(max(wait, 0.0)))
            changed = asyncio.ensure_future(self._changed.wait())
            try:
                await asyncio.wait({sleeper, changed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                changed.cancel()
        return False

    def release(self) -> None:
        """A probe ended (however): the next may go when its time comes."""
        self._probing = False
        self._changed.set()

    def describe(self, ended: bool = False) -> str:
        """``endpoint unreachable since 12:03:10 — connection refused; 3 probes, next
        try in 40 s`` (``…, trying now`` while a probe goes; ``ended``: the wait is
        over, so ``…; 3 probes in 1800 s``)."""
        if self.since is None:
            return "the endpoint answers"
        since = time.strftime("%H:%M:%S", time.localtime(self.since))
        head = (f"endpoint unreachable since {since} — {self.reason}; "
                f"{self.probes} probe{'s' if self.probes != 1 else ''}")
        if ended:
            return f"{head} in {self.clock() - self.since:.0f} s"
        wait = self.next_probe - self.clock()
        return f"{head}, trying now" if self._probing or wait < 0.5 else \
            f"{head}, next try in {wait:.0f} s"

    # ---------------------------------------------------------------- state

    def _begin(self, reason: str) -> None:
        if self.since is not None:
            self.reason = reason
            return
        self.since = self.clock()
        self.reason = reason
        self.probes = 0
        self.interval = FIRST_PROBE
        self.next_probe = self.since + FIRST_PROBE
        self._notify()

    def _probe_failed(self) -> None:
        self.interval = min(MAX_INTERVAL, self.interval * 2)
        self.next_probe = self.clock() + self.interval
        self._notify()

    def _end(self) -> None:
        if self.since is None:
            return
        self.since = None
        self.reason = ""
        self._probing = False
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        if self.on_change is not None:
            self.on_change(self.state())


def _reason(err: AttemptError) -> str:
    untrusted = _UNTRUSTED.search(err.message)
    if untrusted:  # the certificate, not the network: say which, and what to do
        why = untrusted[1].rstrip(".")
        fix = ("base_url's host is not one the certificate names" if "mismatch" in why.lower()
               else "an endpoint of your own: name its CA with SSL_CERT_FILE")
        return f"the server's certificate is not trusted: {why} ({fix})"
    said = _cause(err.message.lower())
    if err.message.startswith("the proxy "):  # the way to the endpoint is what is down
        answered = err.message.partition(" answered ")[2].partition(" instead")[0]
        return f"{err.message.split(' ')[2]} (the proxy): " + (
            f"it answered {answered}" if answered else said)
    return said


_UNTRUSTED = re.compile(r"certificate verify failed: (.+?)(?: \(_ssl\.c|'?\)?\]|$)")


def _cause(text: str) -> str:
    for needle, said in (("refused", "connection refused"), ("reset", "connection reset"),
                         ("name or service", "the host name does not resolve"),
                         ("nodename", "the host name does not resolve"),
                         ("temporary failure in name", "the host name does not resolve"),
                         ("dns", "the host name does not resolve"),
                         ("ssl", "the TLS handshake failed"),
                         ("certificate", "the TLS handshake failed"),
                         ("timeout", "connecting timed out"),
                         ("timed out", "connecting timed out")):
        if needle in text:
            return said
    return "the connection failed"
