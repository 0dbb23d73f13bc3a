"""batchgen.wire.sdk: the SDK's client without its type modules, and the whole SDK after.

Each case runs in a fresh interpreter: what is imported is the point.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from tests.helpers import ROOT


def _python(code: str, **env: str) -> Any:
    environ = {k: v for k, v in os.environ.items()
               if k not in ("OPENAI_LOG", "BATCHGEN_SDK_IMPORT")}
    environ.update(env, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=environ, check=False,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


COUNT = "sum(1 for m in sys.modules if m.startswith('openai.types.'))"


def test_the_client_loads_without_the_api_types_and_the_package_is_whole_after() -> None:
    out = _python(f"""
        import json, sys
        from batchgen.wire.sdk import sdk
        s = sdk()
        light_types = {COUNT}
        import openai
        version = openai.__version__  # a dunder the package's body defines
        from openai.types.chat import ChatCompletionChunk
        from openai import APIStatusError, OpenAI
        full = __import__("importlib").import_module("openai._exceptions")
        print(json.dumps({{
            "light": s.light, "types_before": light_types,
            "same_client": openai.AsyncOpenAI is s.AsyncOpenAI,
            "same_error": APIStatusError is full.APIStatusError,
            "chunk": ChatCompletionChunk.__name__, "sync": OpenAI.__name__,
            "usage": openai.types.CompletionUsage.__name__,
            "resources": hasattr(openai, "resources"),
            "version": version,
            "types_after": {COUNT},
        }}))
    """)
    assert out["light"] is True
    assert out["same_client"] and out["same_error"]
    assert (out["chunk"], out["sync"], out["usage"]) == ("ChatCompletionChunk", "OpenAI",
                                                         "CompletionUsage")
    assert out["resources"] and out["version"]
    # the light import left the API's hundreds of type modules alone; asking for
    # them brought them in
    assert out["types_before"] < 60 < out["types_after"]


def test_a_client_made_on_the_light_import_calls_the_batch_api_resources() -> None:
    out = _python("""
        import json
        from batchgen.wire.stream import make_client
        client = make_client("http://127.0.0.1:9/v1", "sk-test", connect_timeout=1,
                             idle_timeout=None, max_connections=4)
        files, batches = client.files, client.batches
        print(json.dumps([type(files).__name__, type(batches).__name__]))
    """)
    assert out == ["AsyncFiles", "AsyncBatches"]


def test_full_import_when_asked_when_openai_log_is_set_or_openai_is_already_loaded() -> None:
    code = """
        import json, sys
        {pre}
        from batchgen.wire.sdk import sdk
        print(json.dumps([sdk().light, {count}]))
    """
    for pre, env in (("", {"BATCHGEN_SDK_IMPORT": "full"}), ("", {"OPENAI_LOG": "info"}),
                     ("import openai", {})):
        light, types = _python(code.format(pre=pre, count=COUNT), **env)
        assert light is False and types > 60, (pre, env)


def test_an_sdk_laid_out_otherwise_falls_back_to_the_plain_import_and_leaves_nothing() -> None:
    out = _python(f"""
        import json, sys
        import batchgen.wire.sdk as mod
        mod.DEFERRED = (*mod.DEFERRED, "openai.no_such_package")
        s = mod.sdk()
        import openai
        print(json.dumps([s.light, openai.AsyncOpenAI is s.AsyncOpenAI,
                          type(sys.modules["openai"]).__name__, {COUNT}]))
    """)
    assert out[0] is False and out[1] is True
    assert out[2] == "module" and out[3] > 60


# ---------------------------------------------------------------- TLS context

PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


def test_a_plain_http_endpoint_without_a_proxy_gets_a_context_that_trusts_no_one(
        monkeypatch: Any) -> None:
    import ssl

    from batchgen.wire.stream import tls_context

    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    for url in ("http://127.0.0.1:8080/v1", "HTTP://gpu-node:8000/v1"):
        ctx = tls_context(url)
        assert isinstance(ctx, ssl.SSLContext), url
        # fails closed: a certificate is required, checked against the host, and
        # no certificate authority is trusted
        assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
        assert ctx.cert_store_stats()["x509_ca"] == 0
    # TLS endpoints keep the SDK's default (the system's CA certificates)
    assert tls_context("https://dashscope.aliyuncs.com/compatible-mode/v1") is True


@pytest.mark.parametrize("var", ["http_proxy", "HTTPS_PROXY", "all_proxy"])
def test_a_proxy_in_the_environment_keeps_the_default_context(monkeypatch: Any,
                                                              var: str) -> None:
    from batchgen.wire.stream import tls_context

    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(var, "https://proxy.example:3128")
    assert tls_context("http://127.0.0.1:8080/v1") is True


def test_the_client_carries_the_context_on_either_transport() -> None:
    out = _python("""
        import json, os
        for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                     "ALL_PROXY"):
            os.environ.pop(name, None)
        from batchgen.wire.sdk import sdk
        from batchgen.wire.stream import make_client

        def cas(http_client):
            transport = http_client._transport
            ctx = getattr(transport, "ssl_context", None)
            if ctx is None:  # httpx's own transport keeps it in its pool
                ctx = transport._pool._ssl_context
            return ctx.cert_store_stats()

        out = {}
        for http, default in (("aiohttp", sdk().DefaultAioHttpClient),
                              ("httpx", sdk().DefaultAsyncHttpxClient)):
            os.environ["BATCHGEN_HTTP"] = http
            for url in ("http://127.0.0.1:9/v1", "https://127.0.0.1:9/v1"):
                client = make_client(url, "sk-test", connect_timeout=1, idle_timeout=None,
                                     max_connections=4)
                out[f"{http} {url[:5]}"] = cas(client._client)
            out[f"{http} default"] = cas(default())
        print(json.dumps(out))
    """)
    for http in ("aiohttp", "httpx"):
        assert out[f"{http} http:"]["x509_ca"] == 0, out
        # a TLS endpoint: the very certificates the SDK's own default trusts
        assert out[f"{http} https"] == out[f"{http} default"], out
