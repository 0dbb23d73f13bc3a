"""More HTTP headers on every request of a job: ``endpoint.headers`` in the
job file, ``--header 'Name: value'`` on the command line.

A gateway in front of a provider (Cloudflare AI Gateway, Portkey, Helicone, a
company's own) wants its own key or route in a header; a provider has
switches that are headers (Model Studio's ``X-DashScope-DataInspection``,
OpenRouter's ``X-Title``). A value's ``${NAME}`` parts are read from the
environment when the run starts, so a key never sits in a job file, and each
value read so is scrubbed from every message as the API key is. From a job
file, ``NAME`` follows the rule for ``endpoint.api_key_env``: an API-key
variable, or one the user allowed, and a provider's key variable goes to that
provider's hosts only. Headers are not part of a request's fingerprint: they
route and bill a request, they do not change what it asks.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from batchgen.errors import UsageError

ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_BROKEN_REF = re.compile(r"\$\{(?![A-Za-z_][A-Za-z0-9_]*\})")
_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP token

# what batchgen sets itself (the key from api_key_env), or HTTP's own framing
RESERVED = frozenset({
    "authorization", "proxy-authorization", "content-type", "content-length", "accept",
    "accept-encoding", "user-agent", "host", "connection", "keep-alive", "transfer-encoding",
    "te", "trailer", "upgrade", "expect",
})

Headers = tuple[tuple[str, str], ...]


def check_headers(value: dict[str, str]) -> dict[str, str]:
    """``endpoint.headers`` as written: header names, none batchgen sets, each
    once, values on one line with well-formed ``${NAME}`` parts."""
    seen: set[str] = set()
    for name, text in value.items():
        check_header(name, text)
        if name.lower() in seen:
            raise ValueError(f"header {name!r} is given twice (header names ignore case)")
        seen.add(name.lower())
    return value


def check_header(name: str, text: str) -> None:
    if not _NAME.match(name):
        raise ValueError(f"{name!r} is not a header name (letters, digits and '-')")
    if name.lower() in RESERVED:
        raise ValueError(f"header {name!r} is batchgen's to set" + (
            ": the key comes from endpoint.api_key_env (or --api-key-env)"
            if name.lower() == "authorization" else ""))
    if any(c in text for c in "\r\n\x00"):
        raise ValueError(f"header {name!r}: its value must be one line")
    if _BROKEN_REF.search(text):
        raise ValueError(f"header {name!r}: ${{...}} names an environment variable "
                         "(letters, digits and '_', not starting with a digit)")


def parse_flag(text: str) -> tuple[str, str]:
    """``--header 'Name: value'`` as (name, value)."""
    name, colon, value = text.partition(":")
    if not colon:
        raise UsageError(f"--header {text!r}: write it as 'Name: value'")
    try:
        check_header(name.strip(), value.strip())
    except ValueError as exc:
        raise UsageError(f"--header: {exc}") from None
    return name.strip(), value.strip()


def merged(job_file: dict[str, str], flags: Iterable[tuple[str, str]]) -> Headers:
    """The job file's headers, each flag's replacing one of the same name."""
    out = {name.lower(): (name, text) for name, text in job_file.items()}
    out.update({name.lower(): (name, text) for name, text in flags})
    return tuple(out.values())


def env_names(text: str) -> list[str]:
    return ENV_REF.findall(text)


def resolve(headers: Headers) -> tuple[dict[str, str], list[str]]:
    """The headers as sent, their ``${NAME}`` parts read from the environment,
    and the values read so (to scrub from messages). A variable that is not
    set is a :class:`UsageError` naming it, never showing a value."""
    out: dict[str, str] = {}
    secrets: list[str] = []
    for name, text in headers:
        def value_of(match: re.Match[str], header: str = name) -> str:
            variable = match.group(1)
            value = os.environ.get(variable, "").strip()
            if not value:
                raise UsageError(f"header {header!r} needs the environment variable {variable}: "
                                 f"set it (export {variable}=...)")
            if any(c in value for c in "\r\n\x00"):
                raise UsageError(f"header {header!r}: the environment variable {variable} "
                                 "holds more than one line")
            secrets.append(value)
            return value

        out[name] = ENV_REF.sub(value_of, text)
    return out, secrets
