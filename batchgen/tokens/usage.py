"""Usage of one attempt: as the server reported it, or estimated and flagged.

Every detail field is optional on the wire. ``completion_tokens`` includes
reasoning tokens. Cached prompt tokens come from
``prompt_tokens_details.cached_tokens`` (OpenAI, DashScope, llama.cpp) or
``prompt_cache_hit_tokens`` (DeepSeek). Each figure says how it was obtained
(``prompt_method``, ``completion_method``: exact, derived, tokenizer,
calibrated, static — see ``batchgen.tokens.estimator``).
"""

from __future__ import annotations

import json
from typing import Any

from batchgen.store.records import Usage
from batchgen.tokens.estimator import Estimator

_STATIC = Estimator()


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not 0 <= value <= 2**53:  # also NaN: a figure no server bills by
        return None
    return int(value)


def _detail(usage: dict[str, Any], section: str, key: str) -> int | None:
    details = usage.get(section)
    return _int(details.get(key)) if isinstance(details, dict) else None


def estimate(body: dict[str, Any], content: str, reasoning: str,
             estimator: Estimator | None = None) -> Usage:
    """Estimated usage for an attempt the server never reported on."""
    est = estimator or _STATIC
    prompt, how_prompt = est.prompt(body)
    completion, thought, how = est.completion(str(body.get("model", "")), content, reasoning)
    return Usage(prompt, completion, prompt + completion, thought, None,
                 prompt_method=how_prompt, completion_method=how)


def from_report(usage: dict[str, Any] | None, body: dict[str, Any], content: str,
                reasoning: str, estimator: Estimator | None = None) -> Usage:
    """The server's figures; whatever it left out is estimated and flagged."""
    if not usage:
        return estimate(body, content, reasoning, estimator)
    guess: Usage | None = None
    prompt = _int(usage.get("prompt_tokens"))
    completion = _int(usage.get("completion_tokens"))
    prompt_method = completion_method = "exact"
    if prompt is None or completion is None:
        guess = estimate(body, content, reasoning, estimator)
        if prompt is None:
            prompt, prompt_method = guess.prompt_tokens, guess.prompt_method
        if completion is None:
            completion, completion_method = guess.completion_tokens, guess.completion_method
    total = _int(usage.get("total_tokens"))
    reasoning_tokens = _detail(usage, "completion_tokens_details", "reasoning_tokens")
    if reasoning_tokens is None:
        reasoning_tokens = _int(usage.get("reasoning_tokens"))
    cached = _detail(usage, "prompt_tokens_details", "cached_tokens")
    if cached is None:
        cached = _int(usage.get("prompt_cache_hit_tokens"))
    audio_in = _detail(usage, "prompt_tokens_details", "audio_tokens")
    audio_out = _detail(usage, "completion_tokens_details", "audio_tokens")
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=total if total is not None and guess is None else prompt + completion,
        reasoning_tokens=reasoning_tokens,
        cached_tokens=cached,
        raw=json.dumps(usage, separators=(",", ":"), ensure_ascii=False),
        prompt_method=prompt_method,
        completion_method=completion_method,
        audio_prompt_tokens=audio_in or None,
        audio_completion_tokens=audio_out or None,
    )
