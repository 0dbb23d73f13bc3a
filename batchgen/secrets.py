"""Keys come from the environment and never leave this process in text.

:class:`Redactor` scrubs a key out of any text that came from a server (error
messages sometimes echo what they were sent) before it is stored, logged or
printed. The HTTP libraries' loggers are held at WARNING so that no debug log
ever prints request headers.
"""

from __future__ import annotations

import logging
import os

from .errors import UsageError

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


def api_key_from_env(variable: str | None) -> str:
    """The key named by ``api_key_env``; a clear error (never the value) if unset."""
    if variable is None:
        return "no-key"
    value = os.environ.get(variable, "").strip()
    if not value:
        raise UsageError(
            f"the API key is missing: set the environment variable {variable} "
            f"(export {variable}=...), or name another variable with endpoint.api_key_env "
            "or --api-key-env"
        )
    return value


def quiet_transport_logs() -> None:
    """Keep HTTP client loggers at WARNING, whatever the root level is."""
    for name in TRANSPORT_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
