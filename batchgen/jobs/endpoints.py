"""What an endpoint's URL says about it, decided when a job is validated.

The continuation form (how an interrupted answer goes back to the endpoint;
the forms are described in :mod:`batchgen.engine.continuation`) follows the
endpoint unless ``endpoint.continuation`` names one. A provider's key
variable goes only to that provider's hosts when the job file names the
endpoint (:func:`key_elsewhere`).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from batchgen.jobs.records import Endpoint
from batchgen.jobs.schema import is_loopback
from batchgen.secrets import KEY_ENVS_VAR, allowed_key_env

FORMS = ("partial", "prefix", "continue_final_message", "prefill", "none")


def detect(base_url: str, local: bool) -> str:
    """The continuation form an endpoint most likely speaks."""
    if local:
        return "prefill"
    parts = urlsplit(base_url)
    host = (parts.hostname or "").lower()
    if re.search(r"(^|\.)dashscope[a-z0-9-]*\.aliyuncs\.com$", host):
        return "partial"
    if host == "api.deepseek.com" and parts.path.rstrip("/").startswith("/beta"):
        return "prefix"
    return "none"


# Variables that hold one provider's key, that provider's name and the hosts
# it answers at. A job file that sends one of them elsewhere does not get it
# sent (see :func:`key_elsewhere`).
KEY_HOMES: dict[str, tuple[str, str]] = {
    # any of Alibaba Cloud's API hosts: Model Studio's regions and workspaces
    "DASHSCOPE_API_KEY": ("Model Studio", r"(^|\.)aliyuncs\.com$"),
    "OPENAI_API_KEY": ("OpenAI", r"^api\.openai\.com$"),
    "DEEPSEEK_API_KEY": ("DeepSeek", r"^api\.deepseek\.com$"),
    "ANTHROPIC_API_KEY": ("Anthropic", r"^api\.anthropic\.com$"),
    "GEMINI_API_KEY": ("Google", r"^generativelanguage\.googleapis\.com$"),
    "MISTRAL_API_KEY": ("Mistral", r"^api\.mistral\.ai$"),
    "GROQ_API_KEY": ("Groq", r"^api\.groq\.com$"),
    "OPENROUTER_API_KEY": ("OpenRouter", r"^openrouter\.ai$"),
    "XAI_API_KEY": ("xAI", r"^api\.x\.ai$"),
}


def key_elsewhere(api_key_env: str, base_url: str) -> str | None:
    """The provider whose key ``api_key_env`` holds, when ``base_url`` is
    neither one of that provider's hosts nor loopback; else None.

    A job file from someone else could otherwise name its own server and
    receive the user's Model Studio key (the default variable) as a bearer
    token. A loopback server is the user's own (llama-server, a tunnel).
    """
    home = KEY_HOMES.get(api_key_env)
    if home is None:
        return None
    host = (urlsplit(base_url).hostname or "").lower()
    if is_loopback(host) or re.search(home[1], host):
        return None
    return home[0]


def withheld_note(variable: str, provider: str, base_url: str) -> str:
    """What a user reads where :func:`key_elsewhere` kept a key back."""
    host = urlsplit(base_url).hostname or base_url
    return (f"{variable} holds a {provider} key and the job file sends its requests to "
            f"{host}, which is not {provider}'s: the key is not sent there. If {host} takes "
            f"a key of its own, name its variable with endpoint.api_key_env; to send "
            f"{variable} there (a gateway you trust), pass --api-key-env {variable} or "
            f"--allow-key-env {variable}")


def key_note(endpoint: Endpoint) -> str | None:
    """:func:`withheld_note` for ``endpoint``, when its key was kept back."""
    if endpoint.key_withheld is None:
        return None
    return withheld_note(*endpoint.key_withheld, endpoint.base_url)


def header_env_refused(variable: str, header: str, base_url: str,
                       allowed: set[str]) -> str | None:
    """Why a job file may not send ``variable`` in ``header`` to ``base_url``
    (the rules of ``api_key_env``: a job file from someone else must not pick
    any variable, nor send a provider's key to a host of its own); None when
    it may, as it may any variable the user allowed."""
    if variable in allowed:
        return None
    if not allowed_key_env(variable):
        return (f"header {header!r}: {variable} does not look like an API-key variable "
                "(*_API_KEY); a job file may not send any variable to its endpoint. Allow it "
                f"with --allow-key-env {variable} or {KEY_ENVS_VAR}={variable}")
    provider = key_elsewhere(variable, base_url)
    if provider is not None:
        host = urlsplit(base_url).hostname or base_url
        return (f"header {header!r}: {variable} holds a {provider} key, and {host} is not "
                f"{provider}'s; to send it there (a gateway you trust), pass --allow-key-env "
                f"{variable}")
    return None
