"""Whether a request asks its model to think before it answers.

Model Studio refuses two things while a model thinks: partial mode (so an
interrupted answer starts over, :mod:`batchgen.engine.continuation`) and a
``response_format`` (so ``schema_mode: auto`` puts the schema in the prompt,
:mod:`batchgen.jobs.structured`). A request thinks when it says so
(``enable_thinking: true``, ``reasoning_effort``, ``thinking: {type:
enabled}``), when its model always thinks, or when its model thinks unless
told not to.
"""

from __future__ import annotations

import re
from typing import Any

# Models that always think (Model Studio refuses partial mode for them).
THINKING_MODELS = re.compile(
    r"^(qwq|qvq)|thinking|reason|deepseek-r1|-r1\b|^o[1345](-|$)|gpt-oss", re.IGNORECASE)
# Qwen3 open-source models think unless told not to (enable_thinking: false);
# their -instruct-2507 versions never think (and -thinking-2507 always do). So
# do Model Studio's Qwen3.5 models (qwen3.5-plus, qwen3.5-flash, ...).
THINKING_BY_DEFAULT = re.compile(
    r"^qwen3-(\d+(\.\d+)?b|\d+b-a\d+b)(?!.*instruct)|^qwen3\.5-", re.IGNORECASE)


def thinks(body: dict[str, Any]) -> bool:
    """Whether the request ``body`` has its model think first."""
    extra = body.get("extra_body") or {}
    model = str(body.get("model", ""))
    if extra.get("enable_thinking") is True or body.get("reasoning_effort"):
        return True
    thinking = extra.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        return True
    if THINKING_BY_DEFAULT.search(model) and extra.get("enable_thinking") is not False:
        return True
    return bool(THINKING_MODELS.search(model))
