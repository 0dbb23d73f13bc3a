"""batchgen.wire.transport: the streaming path's own HTTP client (aiohttp).

What it sends (auth, JSON body, User-Agent, no compression), what it refuses
(redirects), where it goes (proxies from the environment), what it trusts
(the system's store; nothing at all where no TLS can happen), how an error
answer becomes batchgen's own error, and that a streamed run never imports
the openai SDK.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from batchgen import __version__
from batchgen.errors import (
    AttemptError,
    RequestFatalError,
    RunFatalError,
    TransientError,
    UsageError,
)
from batchgen.pacing.outage import _reason as outage_reason
from batchgen.testing.fakeserver import FakeServer
from batchgen.wire.retry import classify
from batchgen.wire.transport import Transport, proxy_for, tls_context
from tests.helpers import CANARY, KEY_ENV, ROOT, run_cli, write_job

PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY",
              "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")

SSE_BODY = (b'data: {"choices":[{"delta":{"content":"hi"},"finish_reason":"stop","index":0}]}'
            b"\n\ndata: [DONE]\n\n")


@pytest.fixture
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


Handler = Callable[[str, dict[str, str], bytes], bytes]


async def serve(handler: Handler, tls: ssl.SSLContext | None = None,
                ) -> tuple[asyncio.Server, int, list[tuple[str, dict[str, str], bytes]]]:
    """A raw HTTP/1.1 server on a free loopback port (over TLS with ``tls``):
    it records each request (request line, headers, body) and answers
    ``handler``'s bytes."""
    seen: list[tuple[str, dict[str, str], bytes]] = []

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in lines[1:] if line)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        seen.append((lines[0], headers, body))
        writer.write(handler(lines[0], headers, body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(one, "127.0.0.1", 0, ssl=tls)
    return server, server.sockets[0].getsockname()[1], seen


def answer(status: str, headers: dict[str, str], body: bytes) -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (f"HTTP/1.1 {status}\r\n{head}Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode() + body


def stream_ok(_line: str, _headers: dict[str, str], _body: bytes) -> bytes:
    return answer("200 OK", {"Content-Type": "text/event-stream", "x-request-id": "req-1"},
                  SSE_BODY)


async def through(base_url: str, body: dict[str, Any],
                  then: Callable[[Transport], Awaitable[Any]] | None = None) -> bytes:
    transport = Transport(base_url, CANARY, connect_timeout=5, max_connections=2,
                          redact=lambda s: s.replace(CANARY, "***"))
    try:
        response = await transport.stream(body)
        got = b""
        while piece := await response.read():
            got += piece
        response.close()
        if then is not None:
            await then(transport)
        return got
    finally:
        await transport.close()


def request_answered(status: str, headers: dict[str, str], body: bytes) -> None:
    """One request to a server that answers ``status``, ``headers`` and
    ``body``; whatever the transport raises for it propagates."""
    def fixed(_line: str, _headers: dict[str, str], _body: bytes) -> bytes:
        return answer(status, headers, body)

    async def main() -> None:
        server, port, _ = await serve(fixed)
        async with server:
            await through(f"http://127.0.0.1:{port}/v1", {"model": "m"})

    asyncio.run(main())


def test_a_request_carries_the_key_the_json_body_and_batchgen_s_user_agent(
        no_proxies: None) -> None:
    async def main() -> tuple[bytes, list[tuple[str, dict[str, str], bytes]]]:
        server, port, seen = await serve(stream_ok)
        async with server:
            got = await through(f"http://127.0.0.1:{port}/v1", {"model": "m", "stream": True,
                                                               "x": "流"})
        return got, seen

    got, seen = asyncio.run(main())
    assert got == SSE_BODY
    (line, headers, body), = seen
    assert line == "POST /v1/chat/completions HTTP/1.1"
    assert headers["authorization"] == f"Bearer {CANARY}"
    assert headers["user-agent"] == f"batchgen/{__version__}"
    assert headers["accept-encoding"] == "identity"
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"model": "m", "stream": True, "x": "流"}


def test_an_error_answer_is_batchgen_s_error_with_its_data_and_no_key(no_proxies: None) -> None:
    error = {"error": {"code": "Throttling", "message": f"slow down {CANARY}",
                       "type": "rate_limit"}}
    with pytest.raises(TransientError) as info:
        request_answered("429 Too Many Requests",
                         {"Retry-After": "7", "x-request-id": "req-429",
                          "Content-Type": "application/json"}, json.dumps(error).encode())
    err = info.value
    assert (err.error_class, err.http_status, err.code, err.provider_request_id) == (
        "rate_limited", 429, "Throttling", "req-429")
    assert err.retry_after == 7.0
    assert CANARY not in str(err) and "slow down ***" in str(err)


def test_an_html_error_page_is_one_line_of_its_text(no_proxies: None) -> None:
    """A web server at a wrong base URL answers a page, not an API error: the
    error says so on one line, its visible text without the markup."""
    page = (b"<!DOCTYPE html>\n<html>\n<head><title>404 Not Found</title>\n"
            b"<style>h1 { color: red }</style></head>\n<body>\n<h1>Not Found</h1>\n"
            b"<p>The requested URL was not found &amp; " + CANARY.encode()
            + b" is not here.</p>\n</body>\n</html>\n")

    with pytest.raises(RequestFatalError) as info:
        request_answered("404 Not Found", {"Content-Type": "text/html"}, page)
    err = info.value
    assert (err.error_class, err.http_status) == ("http_404", 404)
    assert err.message == ("an HTML page: 404 Not Found Not Found The requested URL was not "
                           "found & *** is not here.")


def test_a_long_error_text_is_cut_after_the_key_is_taken_out(no_proxies: None) -> None:
    """The message keeps 500 characters: the key is redacted before the cut, so
    a key that straddles it leaves no prefix behind."""
    page = b"x" * 490 + b" " + CANARY.encode() + b" and more"

    with pytest.raises(TransientError) as info:
        request_answered("502 Bad Gateway", {"Content-Type": "text/plain"}, page)
    assert CANARY[:6] not in str(info.value) and " ***" in str(info.value)


@pytest.mark.parametrize("status", ["301 Moved Permanently", "307 Temporary Redirect"])
def test_a_redirect_is_not_followed_and_names_its_target(no_proxies: None, status: str) -> None:
    async def main() -> list[tuple[str, dict[str, str], bytes]]:
        def moved(_line: str, _headers: dict[str, str], _body: bytes) -> bytes:
            return answer(status, {"Location": f"http://127.0.0.1:{port}/steal"}, b"")

        server, port, seen = await serve(moved)
        async with server:
            with pytest.raises(RequestFatalError, match="/steal"):
                await through(f"http://127.0.0.1:{port}/v1", {"model": "m"})
        return seen

    seen = asyncio.run(main())
    assert [line for line, _, _ in seen] == ["POST /v1/chat/completions HTTP/1.1"]  # once


def test_a_proxy_from_the_environment_carries_the_request_and_its_credentials(
        no_proxies: None, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> list[tuple[str, dict[str, str], bytes]]:
        server, port, seen = await serve(stream_ok)
        monkeypatch.setenv("http_proxy", f"http://user:p%40ss@127.0.0.1:{port}")
        async with server:
            got = await through("http://api.invalid/v1", {"model": "m"})
        assert got == SSE_BODY
        return seen

    (line, headers, _), = asyncio.run(main())
    assert line == "POST http://api.invalid/v1/chat/completions HTTP/1.1"  # via the proxy
    assert headers["proxy-authorization"] == "Basic dXNlcjpwQHNz"  # user:p@ss
    assert headers["authorization"] == f"Bearer {CANARY}"


def test_a_proxy_that_cannot_be_reached_is_named_without_its_credentials(
        no_proxies: None, monkeypatch: pytest.MonkeyPatch) -> None:
    for variable, url in (("http_proxy", "http://api.invalid/v1"),
                          ("https_proxy", "https://api.invalid/v1")):
        monkeypatch.setenv(variable, "http://user:s3cret@127.0.0.1:1")
        with pytest.raises(TransientError) as info:
            asyncio.run(through(url, {"model": "m"}))
        err = info.value
        assert err.error_class == "connection" and "s3cret" not in str(err)
        assert err.message.startswith("the proxy http://127.0.0.1:1 cannot be reached: "
                                      "ConnectionRefusedError")
        # the outage line says it is the way to the endpoint that is down
        assert outage_reason(err) == "http://127.0.0.1:1 (the proxy): connection refused"
        monkeypatch.delenv(variable)


@pytest.mark.parametrize(("status", "error", "error_class", "says"), [
    ("407 Proxy Authentication Required", RunFatalError, "proxy_auth",
     "it wants credentials; put them in the proxy variable's URL"),
    ("403 Forbidden", RunFatalError, "access_denied", "add the host to no_proxy"),
    ("502 Bad Gateway", TransientError, "connection", "instead of connecting to the endpoint"),
    # a reason phrase with a terminal escape and a key in it: one clean line, no key
    (f"502 Bad \x1b[2J{CANARY}", TransientError, "connection", "HTTP 502 Bad \\x1b[2J***"),
])
def test_a_proxy_that_will_not_open_the_tunnel(no_proxies: None, monkeypatch: pytest.MonkeyPatch,
                                               status: str, error: type[Exception],
                                               error_class: str, says: str) -> None:
    """An https endpoint through a proxy: its CONNECT answered other than 200.
    Credentials wanted or the host refused stop the run (every request would
    get the same); a 502 is the endpoint out of reach, an outage."""
    async def main() -> list[tuple[str, dict[str, str], bytes]]:
        server, port, seen = await serve(lambda *_: answer(status, {}, b""))
        monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{port}")
        async with server:
            with pytest.raises(error) as info:
                await through("https://api.invalid/v1", {"model": "m"})
        err = info.value
        assert isinstance(err, AttemptError) and err.error_class == error_class
        assert err.message.startswith(f"the proxy http://127.0.0.1:{port} answered HTTP "
                                      f"{status[:3]}") and says in err.message
        assert CANARY not in str(err) and "\x1b" not in str(err)
        return seen

    (line, headers, _), = asyncio.run(main())
    assert line == "CONNECT api.invalid:443 HTTP/1.1" and "authorization" not in headers


def test_a_407_from_a_plain_http_proxy_stops_the_run(no_proxies: None) -> None:
    with pytest.raises(RunFatalError) as info:
        request_answered("407 Proxy Authentication Required", {}, b"")
    assert info.value.error_class == "proxy_auth"
    assert "a proxy between batchgen and the endpoint wants credentials" in info.value.message


def test_a_run_behind_a_proxy_that_wants_credentials_stops_at_once(tmp_path: Path) -> None:
    """From the command line: exit 4 after one attempt, the proxy named, not an
    outage waited out for hours."""
    import socketserver
    import threading

    class Deny(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            while self.rfile.readline() not in (b"\r\n", b""):
                pass
            self.wfile.write(answer("407 Proxy Authentication Required", {}, b""))

    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Deny) as proxy:
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        port = proxy.server_address[1]
        job = write_job(tmp_path / "job.yaml", None, [{"id": "a", "prompt": "hi"}])
        env = {name: "" for name in PROXY_VARS}
        done = run_cli("run", str(job), "--allow-key-env", KEY_ENV, env={
            **env, "https_proxy": f"http://127.0.0.1:{port}", KEY_ENV: CANARY}, timeout=60)
        proxy.shutdown()
    assert done.returncode == 4, done.stderr
    assert f"the proxy http://127.0.0.1:{port} answered HTTP 407" in done.stderr
    status = run_cli("status", str(tmp_path / "out" / "t")).stdout
    assert "pending:   1" in status and "attempts:  1" in status


def test_which_proxy_the_environment_names(no_proxies: None,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    assert proxy_for("https://dashscope.aliyuncs.com/compatible-mode/v1") is None
    monkeypatch.setenv("HTTPS_PROXY", "proxy.corp:3128")
    monkeypatch.setenv("http_proxy", "http://plain.corp:80")
    assert proxy_for("https://dashscope.aliyuncs.com/v1") == "http://proxy.corp:3128"
    assert proxy_for("http://10.0.0.5:8000/v1") == "http://plain.corp:80"
    monkeypatch.setenv("no_proxy", "dashscope.aliyuncs.com,localhost")
    assert proxy_for("https://dashscope.aliyuncs.com/v1") is None
    monkeypatch.delenv("http_proxy")
    monkeypatch.setenv("all_proxy", "http://any.corp:1")
    assert proxy_for("http://10.0.0.5:8000/v1") == "http://any.corp:1"
    monkeypatch.setenv("all_proxy", "socks5://any.corp:1080")
    with pytest.raises(UsageError, match="socks5"):
        proxy_for("http://10.0.0.5:8000/v1")


def test_no_proxy_may_name_networks(no_proxies: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cluster's NO_PROXY lists its networks (10.0.0.0/8), as curl and Go read
    them: a vLLM at 10.1.2.3 went through the company proxy, which cannot reach it."""
    monkeypatch.setenv("http_proxy", "http://proxy.corp:3128")
    monkeypatch.setenv("NO_PROXY", "localhost, 10.0.0.0/8,.svc,fd00::/8,not-a-net/99")
    for url in ("http://10.1.2.3:8000/v1", "http://vllm.team.svc/v1", "http://[fd00::5]:8000/v1"):
        assert proxy_for(url) is None, url
    for url in ("http://11.1.2.3:8000/v1", "http://gpu-node:8000/v1", "http://[fe80::1]/v1"):
        assert proxy_for(url) == "http://proxy.corp:3128", url


def test_this_machine_is_never_reached_through_a_proxy(no_proxies: None,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # a proxy elsewhere cannot reach this machine's loopback (the embedded llama-server)
    monkeypatch.setenv("http_proxy", "http://proxy.corp:3128")
    monkeypatch.setenv("all_proxy", "http://proxy.corp:3128")
    for url in ("http://127.0.0.1:8080/v1", "http://localhost:8080/v1", "http://[::1]:8080/v1",
                "http://127.8.9.10/v1", "https://localhost/v1", "http://app.localhost/v1"):
        assert proxy_for(url) is None, url
    assert proxy_for("http://10.0.0.1/v1") == "http://proxy.corp:3128"


def test_a_plain_http_endpoint_without_a_proxy_gets_a_context_that_trusts_no_one() -> None:
    for url in ("http://127.0.0.1:8080/v1", "HTTP://gpu-node:8000/v1"):
        ctx = tls_context(url, proxied=False)
        # fails closed: a certificate is required, checked against the host, and
        # no certificate authority is trusted
        assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
        assert ctx.cert_store_stats()["x509_ca"] == 0


def test_tls_is_verified_against_the_system_store_or_ssl_cert_file(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    system = ssl.create_default_context().cert_store_stats()
    for url, proxied in (("https://dashscope.aliyuncs.com/v1", False),
                         ("http://127.0.0.1:8080/v1", True)):  # a proxy may speak TLS
        ctx = tls_context(url, proxied=proxied)
        assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
        assert ctx.cert_store_stats() == system
    bundle = ssl.get_default_verify_paths().openssl_cafile
    if not os.path.isfile(bundle):
        pytest.skip("this system has no CA bundle file to point SSL_CERT_FILE at")
    only = tmp_path / "one.pem"
    text = Path(bundle).read_text(encoding="ascii", errors="ignore")
    only.write_text(text[:text.index("-----END CERTIFICATE-----") + 26], encoding="ascii")
    monkeypatch.setenv("SSL_CERT_FILE", str(only))
    assert tls_context("https://x.example/v1", proxied=False).cert_store_stats()["x509_ca"] == 1


def test_certificates_that_are_not_there_are_said_before_anything_is_written(
        tmp_path: Path, fake: FakeServer) -> None:
    """SSL_CERT_FILE naming a file not there read "cannot write to outputs/...:
    No such file or directory ... fix the disk" (exit 74): the run's check now
    loads the store, and says what is wrong with it (exit 2, nothing written)."""
    job = write_job(tmp_path / "job.yaml", None, [{"id": "a", "prompt": "hi"}])
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    for bundle, says in ((tmp_path / "gone.pem", "No such file or directory"),
                         (tmp_path / "junk.pem", "NO_CERTIFICATE_OR_CRL_FOUND")):
        done = run_cli("run", str(job), "--allow-key-env", KEY_ENV,
                       env={"SSL_CERT_FILE": str(bundle), KEY_ENV: CANARY})
        assert done.returncode == 2, done.stderr
        assert f"SSL_CERT_FILE={bundle}: cannot load certificates from it: " in done.stderr
        assert says in done.stderr
        assert not (tmp_path / "out").exists()




def test_a_certificate_the_store_does_not_trust_is_named_with_what_to_do(
        no_proxies: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A self-hosted endpoint whose CA the system does not trust. Its attempts
    are transport failures (an outage: a captive portal's certificate passes),
    and the outage line said only "the TLS handshake failed"; it now says the
    certificate is why, and what to do. Its CA named in SSL_CERT_FILE, it answers."""
    import trustme

    ca = trustme.CA()
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(served)

    async def main() -> tuple[AttemptError, bytes]:
        server, port, _ = await serve(stream_ok, tls=served)
        async with server:
            with pytest.raises(OSError) as info:  # aiohttp's: the attempt classifies it
                await through(f"https://127.0.0.1:{port}/v1", {"model": "m"})
            ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
            monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
            return classify(info.value), await through(f"https://127.0.0.1:{port}/v1",
                                                       {"model": "m"})

    refused, got = asyncio.run(main())
    assert isinstance(refused, TransientError) and refused.error_class == "connection"
    assert outage_reason(refused) == (
        "the server's certificate is not trusted: unable to get local issuer certificate "
        "(an endpoint of your own: name its CA with SSL_CERT_FILE)")
    assert got == SSE_BODY

@pytest.mark.parametrize("base_url", ["http://127.0.0.1:99999/v1", "http://127.0.0.1:abc/v1"])
def test_a_url_no_request_can_go_to_stops_the_run(no_proxies: None, base_url: str) -> None:
    """Not the endpoint being down (the run would wait out an "outage" that
    never ends): validation refuses such a URL, and were one to get here,
    the run stops at once."""
    with pytest.raises(RunFatalError) as info:
        asyncio.run(through(base_url, {"model": "m"}))
    assert info.value.error_class == "bad_url" and base_url in str(info.value)

def test_the_key_is_in_no_repr(no_proxies: None) -> None:
    async def main() -> str:
        transport = Transport("http://127.0.0.1:9/v1", CANARY, connect_timeout=1,
                              max_connections=1, redact=str)
        try:
            return repr(transport) + repr(vars(transport).keys())
        finally:
            await transport.close()

    assert CANARY not in asyncio.run(main())


def test_a_streamed_run_imports_no_openai_module(tmp_path: Path, fake: FakeServer) -> None:
    """``python -X importtime -m batchgen run`` of a streamed job: the openai
    SDK stays for the Batch API and the tests; the streaming path owns its
    transport."""
    job = write_job(tmp_path / "job.yaml", fake, [{"id": "a", "prompt": "[[len=5]] hi"}])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "batchgen", "run",
                           str(job), "-q"], env=env, capture_output=True, text=True,
                          check=False, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:")]
    assert "aiohttp" in imported  # the import log is read, and the transport is there
    assert not [m for m in imported if m == "openai" or m.startswith("openai.")]
    assert not [m for m in imported if m.split(".")[0] in ("httpx", "httpx2", "httpcore2")]
