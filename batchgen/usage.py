"""Usage of one attempt: as the server reported it, or estimated and flagged.

Every detail field is optional on the wire. ``completion_tokens`` includes
reasoning tokens. Cached prompt tokens come from
``prompt_tokens_details.cached_tokens`` (OpenAI, DashScope, llama.cpp) or
``prompt_cache_hit_tokens`` (DeepSeek).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from . import tokens


@dataclass(frozen=True)
class Usage:
    """Tokens of one attempt, as reported by the server or estimated."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    reasoning_tokens: int | None = None
    cached_tokens: int | None = None
    estimated: bool = False
    raw: str | None = None


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def _detail(usage: dict[str, Any], section: str, key: str) -> int | None:
    details = usage.get(section)
    return _int(details.get(key)) if isinstance(details, dict) else None


def estimate(body: dict[str, Any], content: str, reasoning: str) -> Usage:
    """Estimated usage for an attempt the server never reported on."""
    prompt = tokens.prompt_tokens(body.get("messages") or [])
    completion = tokens.completion_tokens(content, reasoning)
    reasoning_tokens = math.ceil(tokens.text_tokens(reasoning)) if reasoning else None
    return Usage(prompt, completion, prompt + completion, reasoning_tokens, None, estimated=True)


def from_report(usage: dict[str, Any] | None, body: dict[str, Any], content: str,
                reasoning: str) -> Usage:
    """The server's figures; whatever it left out is estimated and flagged."""
    if not usage:
        return estimate(body, content, reasoning)
    guess: Usage | None = None
    prompt = _int(usage.get("prompt_tokens"))
    completion = _int(usage.get("completion_tokens"))
    if prompt is None or completion is None:
        guess = estimate(body, content, reasoning)
        prompt = guess.prompt_tokens if prompt is None else prompt
        completion = guess.completion_tokens if completion is None else completion
    total = _int(usage.get("total_tokens"))
    reasoning_tokens = _detail(usage, "completion_tokens_details", "reasoning_tokens")
    if reasoning_tokens is None:
        reasoning_tokens = _int(usage.get("reasoning_tokens"))
    cached = _detail(usage, "prompt_tokens_details", "cached_tokens")
    if cached is None:
        cached = _int(usage.get("prompt_cache_hit_tokens"))
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=total if total is not None else prompt + completion,
        reasoning_tokens=reasoning_tokens,
        cached_tokens=cached,
        estimated=guess is not None,
        raw=json.dumps(usage, separators=(",", ":"), ensure_ascii=False),
    )
