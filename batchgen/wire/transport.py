"""The streaming path's HTTP transport: aiohttp, owned here and nowhere else.

One :class:`Transport` per run and endpoint holds an aiohttp session (a pool of
keep-alive connections) and sends each attempt as one ``POST
{base_url}/chat/completions`` with:

- ``Authorization: Bearer <key>`` (the key is never logged: aiohttp's and this
  module's loggers print no headers, and the key is scrubbed from any text a
  server sends back), ``User-Agent: batchgen/<version>``, ``Accept-Encoding:
  identity`` (an event stream gains little from compression, and a compressed
  body is where a hostile server hides a bomb: one sent anyway is inflated a
  bounded piece at a time by the reader);
- the body as compact JSON (:func:`batchgen.jsonfast.dumps`);
- **no redirects followed**: a 307/308 would re-send the prompt (and the key)
  to another origin, a 301/302 turn the POST into a GET whose reply looks like
  an answer. A 3xx fails the request, naming its target;
- timeouts: ``connect`` for opening a connection; no read timeout (the run's
  watchdog judges idleness by the process's running time);
- proxies from the environment, resolved once for the endpoint's URL:
  ``https_proxy`` / ``HTTPS_PROXY`` for an ``https`` URL, ``http_proxy`` /
  ``HTTP_PROXY`` for ``http``, ``all_proxy`` / ``ALL_PROXY`` for either, and
  ``no_proxy`` / ``NO_PROXY`` (the standard library's reading of them, as
  ``urllib`` does, and networks such as ``10.0.0.0/8``); credentials in
  the proxy's URL are sent to the proxy. This machine's own addresses
  (``localhost``, ``127.0.0.1``, ``::1``) are never proxied.
  ``.netrc`` is not read. A proxy that cannot be reached, or that will not
  open the tunnel to an ``https`` endpoint, is named as the proxy in the error
  (:func:`proxy_refused`);
- TLS verified against the system's trust store (OpenSSL's default paths, or
  ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``), with the host name checked.

An answer with a status other than 200 is read (at most :data:`ERROR_BODY_CAP`
bytes) and raised as batchgen's own error (:func:`batchgen.wire.retry.from_payload`:
status, provider code and message, ``Retry-After``, request id). A 200 is
handed over unread as a :class:`Response` for the stream reader.

No private attribute of aiohttp is read: the socket is paused for gathered
reads through asyncio's public transport methods (:attr:`Response.transport`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import ipaddress
import os
import ssl
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp

from batchgen import __version__
from batchgen.errors import AttemptError, RunFatalError, TransientError, UsageError
from batchgen.jsonfast import dumps
from batchgen.secrets import printable
from batchgen.wire.retry import Redact, from_payload

ERROR_BODY_CAP = 1 << 20  # bytes of an error answer read to say what went wrong
USER_AGENT = f"batchgen/{__version__}"

Read = Callable[[], Awaitable[bytes]]  # the next piece of a body; b"" at its end


@dataclass
class Response:
    """A 2xx answer, its body not yet read.

    ``read`` gives the body's bytes as sent (compressed, if the server
    compressed it anyway), as much as has arrived at each call; ``transport``
    is the connection's asyncio transport while the body streams (``None``
    where there is none to pause)."""

    headers: Mapping[str, str]
    read: Read
    transport: asyncio.BaseTransport | None
    close: Callable[[], None]


def tls_context(base_url: str, proxied: bool) -> ssl.SSLContext:
    """What TLS peers are verified with.

    The system's trust store wherever a TLS connection can be made. A plain-HTTP
    endpoint (a local llama-server, a cluster's own vLLM) reached without a
    proxy makes no TLS connection — redirects are not followed — so it gets a
    context that trusts no one instead of loading the store (50–130 ms of a
    run's start-up): it still requires a verified certificate and the host's
    name, so if it were ever used it would refuse the connection, never accept
    an unverified one.
    """
    if urlsplit(base_url).scheme.lower() == "http" and not proxied:
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname, no CAs
    cafile = os.environ.get("SSL_CERT_FILE") or None
    capath = None if cafile else os.environ.get("SSL_CERT_DIR") or None
    return _trusting(cafile, capath)


@functools.cache
def _trusting(cafile: str | None, capath: str | None) -> ssl.SSLContext:
    """The system's store (or the one named), loaded once a process: the run's
    check loads it, and finds a variable naming what is not there, before
    anything is written; the transport then uses the same context."""
    try:
        return ssl.create_default_context(cafile=cafile, capath=capath)
    except (OSError, ssl.SSLError) as exc:  # a file not there, or not PEM certificates
        said = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if cafile is None:
            raise UsageError(f"cannot load the system's certificate store: {said}; name a "
                             "PEM bundle with SSL_CERT_FILE") from None
        raise UsageError(f"SSL_CERT_FILE={cafile}: cannot load certificates from it: {said}; "
                         "point it at a PEM bundle of certificate authorities, or unset it "
                         "(the system's store is used)") from None


def proxy_for(base_url: str) -> str | None:
    """The proxy the environment names for ``base_url``, or None."""
    parts = urlsplit(base_url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme.lower()) or proxies.get("all")
    host = parts.hostname or ""
    if not proxy or _loopback(host) or urllib.request.proxy_bypass(host) \
            or _in_no_proxy_network(host):
        return None
    scheme = urlsplit(proxy if "://" in proxy else f"http://{proxy}").scheme.lower()
    if scheme not in ("http", "https"):
        raise UsageError(f"the proxy for {parts.scheme} ({scheme}://...) is not one batchgen "
                         "speaks: use an http:// or https:// proxy, or add the endpoint's host "
                         "to no_proxy")
    return proxy if "://" in proxy else f"http://{proxy}"


def _loopback(host: str) -> bool:
    """This machine (localhost, 127.0.0.0/8, ::1): never through a proxy, which
    could not reach it — the embedded llama-server, a server of the user's own
    (as Go's HTTP client does)."""
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _in_no_proxy_network(host: str) -> bool:
    """Whether ``host`` is an IP address inside a network ``no_proxy`` names
    (``10.0.0.0/8``, as curl and Go read it, and a Kubernetes cluster's
    settings write it); the standard library's reading knows names and
    addresses, not networks."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    for entry in (os.environ.get("no_proxy") or os.environ.get("NO_PROXY") or "").split(","):
        if "/" in entry.strip():
            with contextlib.suppress(ValueError):
                if address in ipaddress.ip_network(entry.strip(), strict=False):
                    return True
    return False


class Transport:
    """``await transport.stream(body)`` — one streamed request; ``await
    transport.close()`` at the end. Made on the running event loop."""

    def __init__(self, base_url: str, api_key: str, *, connect_timeout: float,
                 max_connections: int, redact: Redact,
                 headers: Mapping[str, str] | None = None) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.redact = redact
        self.proxy = proxy_for(base_url)
        self.proxy_headers: dict[str, str] | None = None
        self._proxy_address: tuple[str | None, int] | None = None  # (host, port)
        if self.proxy:
            proxy = urlsplit(self.proxy)
            if proxy.username is not None:
                pair = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}"
                self.proxy_headers = {"Proxy-Authorization": "Basic " + base64.b64encode(
                    pair.encode("utf-8")).decode("ascii")}
                self.proxy = proxy._replace(netloc=proxy.netloc.rpartition("@")[2]).geturl()
            where = urlsplit(self.proxy)
            self._proxy_address = (where.hostname, where.port or (
                443 if where.scheme.lower() == "https" else 80))
        self.headers = {  # the job's own headers first: none of them is one of these
            **(headers or {}),
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Accept-Encoding": "identity",
            "User-Agent": USER_AGENT,
        }
        if self.proxy_headers and urlsplit(base_url).scheme.lower() == "http":
            # a plain request goes to the proxy as is: it carries the proxy's
            # credentials itself (an https one sends them in its CONNECT)
            self.headers.update(self.proxy_headers)
            self.proxy_headers = None
        connector = aiohttp.TCPConnector(
            limit=max(max_connections, 16), limit_per_host=0, keepalive_timeout=30.0,
            ssl=tls_context(base_url, self.proxy is not None))
        self.session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, trust_env=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout,
                                          connect=None, sock_read=None),
        )

    async def stream(self, body: dict[str, Any]) -> Response:
        """Send ``body`` (already the wire body); a 2xx answer's body is left to
        read, anything else is raised as what it says (an :class:`AttemptError`)."""
        try:
            response = await self.session.post(
                self.url, data=dumps(body), headers=self.headers, allow_redirects=False,
                proxy=self.proxy, proxy_headers=self.proxy_headers)
        except aiohttp.ClientConnectorError as exc:
            if (exc.host, exc.port) != self._proxy_address:
                raise
            # the proxy itself (refused, its name not found): said so, or the
            # endpoint would look down while the way to it is
            raise TransientError(
                self.redact(f"the proxy {self.proxy} cannot be reached: "
                            f"{type(exc.os_error).__name__}: {exc.os_error}"),
                error_class="connection") from exc
        except aiohttp.ClientHttpProxyError as exc:  # the proxy answered CONNECT, not 200
            raise proxy_refused(str(self.proxy), exc.status,  # its words: one clean line
                                self.redact(printable(exc.message))) from exc
        except aiohttp.InvalidURL as exc:  # no request can go there: not the endpoint down
            raise RunFatalError(self.redact(f"the endpoint's URL {self.url} cannot be sent to "
                                            f"({printable(str(exc))}): check base_url"),
                                error_class="bad_url") from exc
        if not 200 <= response.status < 300:
            raw = bytearray()
            try:
                while len(raw) < ERROR_BODY_CAP:
                    piece = await response.content.read(ERROR_BODY_CAP - len(raw))
                    if not piece:
                        break
                    raw += piece
            finally:
                response.release()
            raise from_payload(response.status, bytes(raw), headers=response.headers,
                               request_id=response.headers.get("x-request-id"),
                               redact=self.redact)
        connection = response.connection
        return Response(headers=response.headers, read=response.content.readany,
                        transport=connection.transport if connection is not None else None,
                        close=response.release)

    async def close(self) -> None:
        await self.session.close()


def proxy_refused(proxy: str, status: int, reason: str) -> AttemptError:
    """A proxy that would not open the tunnel to an ``https`` endpoint: one that
    wants credentials (407) or refuses the host (403) refuses every request
    alike, so the run stops; anything else (a 502 when it cannot reach the
    endpoint) is the way there being down."""
    said = f"the proxy {proxy} answered HTTP {status} {reason}".rstrip()
    if status == 407:
        return RunFatalError(f"{said}: it wants credentials; put them in the proxy "
                             "variable's URL (https_proxy=http://user:password@host:port)",
                             error_class="proxy_auth")
    if status in (401, 403):
        return RunFatalError(f"{said}: it does not let batchgen through to the endpoint's "
                             "host; ask its keeper, or add the host to no_proxy",
                             error_class="access_denied")
    return TransientError(f"{said} instead of connecting to the endpoint",
                          error_class="connection")
