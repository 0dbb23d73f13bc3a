"""The openai SDK, imported for what batchgen uses of it.

``import openai`` runs the package's ``__init__``, which imports every API
type the SDK has — some 450 modules of pydantic models, 0.4–0.9 s of a
run's start-up on a 2-core machine — for a client that batchgen drives
through ``client.post`` alone. :func:`sdk` imports the client's own modules
(``openai._client`` and what it needs) with the packages whose ``__init__``
pulls in those types registered *deferred*: each is a real module object
with its ``__path__``, so its submodules import as usual, and its body runs
the first time anyone asks it for a name it does not have (the Batch API's
resources, a test's ``openai.types.chat``, a user's ``openai.OpenAI``). From
then on it is the package as ``import openai`` gives it, with the same
classes.

Anything unexpected — an SDK laid out differently, ``OPENAI_LOG`` set (its
logging is set up in that ``__init__``), ``BATCHGEN_SDK_IMPORT=full`` —
falls back to the plain import.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import Any

__all__ = ["SDK", "sdk"]

# the packages whose __init__ imports the API's types, parents first
DEFERRED = ("openai", "openai.types", "openai.types.chat", "openai.types.responses", "openai.lib")

_lock = threading.RLock()


class _State:
    loading = False  # while the client's modules import: a deferred package stays so
    cached: SDK | None = None


@dataclass(frozen=True)
class SDK:
    """The names of the SDK batchgen uses."""

    AsyncOpenAI: Any
    DefaultAioHttpClient: Any
    DefaultAsyncHttpxClient: Any
    Timeout: Any
    DEFAULT_CONNECTION_LIMITS: Any
    light: bool  # imported without the packages' bodies (for tests and benchmarks)


class _Deferred(ModuleType):
    """A package whose body has not run yet; it runs on the first name missed."""

    def __getattr__(self, name: str) -> Any:
        if _State.loading:
            # the import system's own "is the submodule bound yet?" checks
            # while the client's modules load
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        _complete(self)
        return getattr(self, name)


def _complete(module: ModuleType) -> None:
    with _lock:
        if type(module) is not _Deferred:
            return  # another thread got here first
        # an ordinary module from here on: a name missed while the body runs
        # is an AttributeError, as in any package part-way through its import
        module.__class__ = ModuleType  # type: ignore[assignment]
        spec = module.__spec__
        assert spec is not None and spec.loader is not None  # noqa: S101 - an invariant
        spec.loader.exec_module(module)


def sdk() -> SDK:
    """The SDK's client classes; the lighter import where it works."""
    with _lock:
        if _State.cached is None:
            light = _light() if _may_be_light() else None
            _State.cached = light if light is not None else _full()
        return _State.cached


def _may_be_light() -> bool:
    if os.environ.get("BATCHGEN_SDK_IMPORT", "light") != "light" or os.environ.get("OPENAI_LOG"):
        return False
    return not any(name == "openai" or name.startswith("openai.") for name in sys.modules)


def _full() -> SDK:
    import openai

    return SDK(openai.AsyncOpenAI, openai.DefaultAioHttpClient, openai.DefaultAsyncHttpxClient,
               openai.Timeout, openai.DEFAULT_CONNECTION_LIMITS, light=False)


def _light() -> SDK | None:
    before = set(sys.modules)
    try:
        for name in DEFERRED:
            _defer(name)
        _State.loading = True
        try:
            client = importlib.import_module("openai._client")
            base = importlib.import_module("openai._base_client")
            constants = importlib.import_module("openai._constants")
        finally:
            _State.loading = False
        return SDK(client.AsyncOpenAI, base.DefaultAioHttpClient, base.DefaultAsyncHttpxClient,
                   client.Timeout, constants.DEFAULT_CONNECTION_LIMITS, light=True)
    except Exception:  # an SDK this does not know: forget all of it, import it whole
        for name in set(sys.modules) - before:
            if name == "openai" or name.startswith("openai."):
                del sys.modules[name]
        return None


def _defer(name: str) -> None:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        raise ImportError(f"{name} is not a package here")
    module = importlib.util.module_from_spec(spec)
    module.__class__ = _Deferred
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
