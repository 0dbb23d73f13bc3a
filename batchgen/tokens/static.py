"""Token estimates for when a server reports none.

Used for aborted / cut-off / killed attempts (the server billed tokens but
never said how many), for rate-limit buckets and for worst-case budgets. Every
figure that comes from here is flagged ``estimated``.

The estimator counts characters by script, because tokenizers differ most
there: Model Studio documents about 1.5-1.8 Chinese characters per Qwen token
and about one English word (≈4 characters with its space) per token.

============  ===================  ===========================================
script        characters / token   counted
============  ===================  ===========================================
ASCII         4.0                  letters, digits, spaces, punctuation
CJK           1.6                  Han, kana, Hangul, CJK punctuation, fullwidth
other         2.5                  Cyrillic, Greek, Arabic, accented Latin, emoji
============  ===================  ===========================================

A message adds 4 tokens of framing; an image part counts 1,000 tokens and an
audio / video part 2,000 (both vary widely by resolution and length).

A request that sets no ``max_tokens`` (nor ``max_completion_tokens``) is
assumed to produce at most :data:`ASSUMED_MAX_OUTPUT` tokens — one rule for the
budget's worst case and the tokens a TPM limit holds for it
(:func:`output_bound`).
"""

from __future__ import annotations

import math
import re
from typing import Any

ASCII_PER_TOKEN = 4.0
CJK_PER_TOKEN = 1.6
OTHER_PER_TOKEN = 2.5
MESSAGE_OVERHEAD = 4
IMAGE_TOKENS = 1000
MEDIA_TOKENS = 2000
ASSUMED_MAX_OUTPUT = 8192


def output_bound(body: dict[str, Any]) -> int:
    """The most completion tokens a request can produce, as far as known."""
    return int(body.get("max_tokens") or body.get("max_completion_tokens")
               or ASSUMED_MAX_OUTPUT)

_CJK = re.compile(
    "[\u1100-\u11ff\u2e80-\u2fdf\u3000-\u303f\u3040-\u30ff\u3100-\u31ff"
    "\u3400-\u4dbf\u4e00-\u9fff\ua960-\ua97f\uac00-\ud7af\uf900-\ufaff"
    "\uff00-\uffef\U00020000-\U0003134f]"
)


def text_tokens(text: str) -> float:
    """Estimated tokens in ``text`` (fractional; round at the end)."""
    if not text:
        return 0.0
    ascii_chars = len(text.encode("ascii", "ignore"))
    rest = len(text) - ascii_chars
    cjk = len(_CJK.findall(text)) if rest else 0
    return ascii_chars / ASCII_PER_TOKEN + cjk / CJK_PER_TOKEN + (rest - cjk) / OTHER_PER_TOKEN


def completion_tokens(content: str, reasoning: str = "") -> int:
    """Estimated completion tokens for text actually received."""
    return math.ceil(text_tokens(content) + text_tokens(reasoning))


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Estimated prompt tokens of a chat request's messages."""
    total = 0.0
    for message in messages:
        total += MESSAGE_OVERHEAD
        content = message.get("content")
        if isinstance(content, str):
            total += text_tokens(content)
        elif isinstance(content, list):
            for part in content:
                kind = part.get("type")
                if kind == "text":
                    total += text_tokens(str(part.get("text", "")))
                elif kind == "image_url":
                    total += IMAGE_TOKENS
                else:
                    total += MEDIA_TOKENS
    return math.ceil(total)
