"""What the fake API answers to a request: text, reasoning, faults, delays.

Text is generated deterministically from the request, so two runs can be
compared byte for byte. Behaviour is scripted in the prompt text itself
(see the package docstring).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

VOCAB = (
    "the of and to in is was for on are with as it at be this by from or an not "
    "which have but all were when we there can more if will one about so out up "
    "time only new some could these two may first then do any like my now over "
    "such our man me even most made after also did many before must through back "
    "years where much your way well down should because each just those people "
    "how too little state good very make world still own see men work long get "
    "here between both life being under never day same another know while last"
).split()
CJK_VOCAB = (
    "我们的是在一有不了人这中大为上个国和地到以说时要就出会可也你对生能而子那得于着下自之年过发后作"
    "里用道行所然家种事成方多经么去法学如都同现当没动面起看定天分还进好小部其些主样理心她本前开但因只从想实日"
)
DIRECTIVE = re.compile(r"\[\[(\w+)=([^\]]*)\]\]")
_TOKEN_RE = re.compile(r"[A-Za-z]{1,6}|\d{1,3}|[^\sA-Za-z\d]")


def _has_cjk(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def count_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """The fake's tokenizer: short word pieces, ~1.6 CJK characters a token."""
    total = 0
    for message in messages:
        total += 3
        content = message.get("content")
        parts = [content] if isinstance(content, str) else [
            p.get("text", "") if p.get("type") == "text" else None
            for p in (content or [])
        ]
        for part in parts:
            if part is None:
                total += 1000  # an image
                continue
            cjk = sum(1 for ch in part if "\u4e00" <= ch <= "\u9fff")
            rest = "".join(ch for ch in part if not "\u4e00" <= ch <= "\u9fff")
            total += math.ceil(cjk / 1.6) + len(_TOKEN_RE.findall(rest))
    return total


@dataclass
class Plan:
    """What one HTTP request gets."""

    tokens: list[str]
    reasoning: list[str]
    finish_reason: str
    delay: float
    fault: str
    prompt_tokens: int
    model: str
    replay: str | None = None  # a recorded stream to play instead (tests/replay.py)
    headers: dict[str, str] = field(default_factory=dict)  # [[header=Name:Value|...]]


@dataclass
class Config:
    delay: float = 0.0
    api_key: str | None = None
    rpm: float | None = None
    tpm: float | None = None
    default_len: int | None = None
    tick: float | None = None  # one shared timer for all streams (benchmarks)


@dataclass
class Ledger:
    entries: list[dict[str, Any]] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    throttled: int = 0
    keys_seen: set[str] = field(default_factory=set)


def plan_for(body: dict[str, Any], attempt: int, config: Config) -> Plan:
    messages = body.get("messages") or []
    model = str(body.get("model", "qwen-plus"))
    text = json.dumps(messages, ensure_ascii=False, sort_keys=True)
    directives = dict(DIRECTIVE.findall(text))
    seed = hashlib.sha256((model + "\n" + text).encode()).digest()
    length = int(directives.get("len", config.default_len or 16 + seed[0] % 33))
    max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
    finish = "stop"
    if max_tokens is not None and length > int(max_tokens):
        length, finish = int(max_tokens), "length"
    think = int(directives.get("think", 0))
    if think == 0 and (model.startswith(("qwq", "qvq")) or body.get("enable_thinking")):
        think = 8 + seed[1] % 8
    faults = [f.strip() for f in directives.get("faults", "").split(",") if f.strip()]
    fault = faults[attempt - 1] if attempt <= len(faults) else "ok"
    cjk = _has_cjk(text)
    rng = int.from_bytes(seed[:8], "big")

    def words(n: int, salt: int) -> list[str]:
        out = []
        state = rng ^ salt
        for i in range(n):
            state = (state * 6364136223846793005 + 1442695040888963407) & (2**64 - 1)
            if cjk:  # one or two characters a token, 1.6 on average (as Qwen's)
                a = CJK_VOCAB[(state >> 33) % len(CJK_VOCAB)]
                b = CJK_VOCAB[(state >> 17) % len(CJK_VOCAB)]
                out.append(a + b if (state >> 7) % 5 < 3 else a)
            elif i and (state >> 9) % 8 == 0:  # punctuation is a token of its own
                out.append(",." [(state >> 13) % 2])
            else:
                word = VOCAB[(state >> 33) % len(VOCAB)]
                out.append(word if i == 0 else " " + word)
        return out

    return Plan(
        tokens=words(length, 0), reasoning=words(think, 0x5EED), finish_reason=finish,
        delay=float(directives.get("delay", config.delay)), fault=fault,
        prompt_tokens=count_prompt_tokens(messages), model=model,
        replay=directives.get("replay"),
        headers=dict(h.split(":", 1) for h in directives.get("header", "").split("|") if h),
    )
