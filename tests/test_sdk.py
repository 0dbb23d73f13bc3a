"""batchgen.sdk: the SDK's client without its type modules, and the whole SDK after.

Each case runs in a fresh interpreter: what is imported is the point.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


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
        from batchgen.sdk import sdk
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
        from batchgen.stream import make_client
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
        from batchgen.sdk import sdk
        print(json.dumps([sdk().light, {count}]))
    """
    for pre, env in (("", {"BATCHGEN_SDK_IMPORT": "full"}), ("", {"OPENAI_LOG": "info"}),
                     ("import openai", {})):
        light, types = _python(code.format(pre=pre, count=COUNT), **env)
        assert light is False and types > 60, (pre, env)


def test_an_sdk_laid_out_otherwise_falls_back_to_the_plain_import_and_leaves_nothing() -> None:
    out = _python(f"""
        import json, sys
        import batchgen.sdk as mod
        mod.DEFERRED = (*mod.DEFERRED, "openai.no_such_package")
        s = mod.sdk()
        import openai
        print(json.dumps([s.light, openai.AsyncOpenAI is s.AsyncOpenAI,
                          type(sys.modules["openai"]).__name__, {COUNT}]))
    """)
    assert out[0] is False and out[1] is True
    assert out[2] == "module" and out[3] > 60
