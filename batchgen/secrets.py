"""Keys come from the environment and never leave this process in text.

:class:`Redactor` scrubs a key out of any text that came from a server (error
messages sometimes echo what they were sent) before it is stored, logged or
printed. The HTTP libraries' loggers are held at WARNING so that no debug log
ever prints request headers.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from batchgen.errors import JobFileError, Problem, UsageError

# C0/C1 control characters but tab and newline, and the bidi overrides that can
# make a terminal show text in another order than it is
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """Text from a server, safe to print: escape sequences and other control
    characters shown escaped (``\\x1b``), never sent to the terminal."""
    if not _CONTROL.search(text):
        return text
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                        else f"\\u{ord(m.group()):04x}", text)


KEY_ENV_RE = re.compile(r"^[A-Za-z0-9_]*API_?KEY$", re.IGNORECASE)
KEY_ENVS_VAR = "BATCHGEN_ALLOWED_KEY_ENVS"  # more names a job file may use, comma-separated


def user_allowed_key_envs(extra: tuple[str, ...] = ()) -> set[str]:
    """The variables the user let job files name (``--allow-key-env``,
    ``BATCHGEN_ALLOWED_KEY_ENVS``) and send to the endpoint they name."""
    return {*extra, *re.split(r"[\s,]+", os.environ.get(KEY_ENVS_VAR, ""))} - {""}


def allowed_key_env(name: str, extra: tuple[str, ...] = ()) -> bool:
    """May a job file name this variable as the one that holds its API key?"""
    return bool(KEY_ENV_RE.match(name)) or name in user_allowed_key_envs(extra)


def check_key_env(file: Path, endpoint: Any, line: int | None, flag: str | None,
                  extra: tuple[str, ...]) -> None:
    """A job file from someone else must not pick any variable (GITHUB_TOKEN)
    to send as the bearer key to the endpoint it names (``--api-key-env`` may)."""
    name = endpoint.api_key_env
    if flag or name is None or "api_key_env" not in endpoint.fields_set:
        return
    if not allowed_key_env(name, extra):
        raise JobFileError([Problem(
            str(file), line, "endpoint.api_key_env",
            f"{name} does not look like an API-key variable (*_API_KEY); a job file may not "
            f"choose any variable to send as its key. Pass --api-key-env {name}, or allow it "
            f"with --allow-key-env {name} or {KEY_ENVS_VAR}={name}")])


TRANSPORT_LOGGERS = ("httpx", "httpx2", "httpcore", "httpcore2", "openai", "hpack")


class Redactor:
    """Replace every occurrence of the given secrets with ``***``."""

    def __init__(self, *secrets: str | None) -> None:
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text

    def __repr__(self) -> str:
        return f"Redactor({len(self._secrets)} secret(s))"


def api_key_from_env(variable: str | None, keyless_ok: bool = False) -> str:
    """The key named by ``api_key_env``; a clear error (never the value) if unset.
    ``keyless_ok``: the endpoint may be a server that takes no key (one of the
    user's own), and the error says how to run against it."""
    if variable is None:
        return "no-key"
    value = os.environ.get(variable, "").strip()
    if not value:
        raise UsageError(
            f"the API key is missing: set the environment variable {variable} "
            f"(export {variable}=...), or name another variable with endpoint.api_key_env "
            "or --api-key-env" + (f"; for a server that takes no key, any value will do "
                                  f"(export {variable}=none)" if keyless_ok else "")
        )
    return value


def quiet_transport_logs() -> None:
    """Keep HTTP client loggers at WARNING, whatever the root level is."""
    for name in TRANSPORT_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
