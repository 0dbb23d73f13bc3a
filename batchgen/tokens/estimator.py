"""Token counts where the server sent none, as close to its own as can be known.

Every figure carries how it was obtained, best first:

==============  ==================================================================
``exact``       the server reported it
``derived``     the server reported it for another attempt of the same request
                with the same messages (prompt tokens; see ``batchgen.tokens.ledger``)
``tokenizer``   counted with the model's real tokenizer (Qwen's BPE, or the local
                llama-server's ``/tokenize``), message framing learned from the
                run's finished requests
``calibrated``  the static estimate times what this run's finished requests
                showed: reported tokens / estimated, per model and direction
                (prompt, content, reasoning), once ``MIN_SAMPLES`` have finished
``static``      characters per token by script (``batchgen.tokens.static``)
==============  ==================================================================

The same :class:`Estimator` serves estimated usage, the budget's worst case,
TPM reservations and a continuation's remaining ``max_tokens``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from batchgen.store.records import METHODS
from batchgen.tokens import static as tokens
from batchgen.tokens.tokenizers import Counter

DIRECTIONS = ("prompt", "content", "reasoning")
MIN_SAMPLES = 3


@dataclass
class Fit:
    """Running sums for ``y ≈ a·x`` (ratios) or ``y ≈ a·x + b`` (framing)."""

    samples: int = 0
    sx: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    sxy: float = 0.0

    def add(self, x: float, y: float) -> None:
        self.samples += 1
        self.sx += x
        self.sy += y
        self.sxx += x * x
        self.sxy += x * y

    def ratio(self) -> float | None:
        """``a`` of ``y ≈ a·x``, once there are enough samples."""
        if self.samples < MIN_SAMPLES or self.sxx <= 0:
            return None
        return self.sxy / self.sxx

    def line(self) -> tuple[float, float] | None:
        """``(a, b)`` of ``y ≈ a·x + b``; ``a = 0`` when every x was the same."""
        if self.samples < 1:
            return None
        n = self.samples
        spread = n * self.sxx - self.sx * self.sx
        if spread <= 1e-9:
            return 0.0, self.sy / n
        a = (n * self.sxy - self.sx * self.sy) / spread
        return a, (self.sy - a * self.sx) / n


class Calibration:
    """What finished requests taught, per (model, direction).

    Directions: ``prompt``, ``content``, ``reasoning`` (x = static estimate,
    y = reported tokens) and ``framing`` (x = messages, y = reported prompt
    tokens minus the tokenizer's count of the text: the chat template and any
    system prompt the provider adds).
    """

    def __init__(self, fits: dict[tuple[str, str], Fit] | None = None) -> None:
        self.fits: dict[tuple[str, str], Fit] = fits or {}

    def fit(self, model: str, direction: str) -> Fit:
        return self.fits.setdefault((model, direction), Fit())

    def ratio(self, model: str, direction: str) -> float | None:
        fit = self.fits.get((model, direction))
        return fit.ratio() if fit is not None else None

    def framing(self, model: str, messages: int) -> float | None:
        fit = self.fits.get((model, "framing"))
        line = fit.line() if fit is not None else None
        return None if line is None else max(0.0, line[0] * messages + line[1])

    def learn(self, model: str, body: dict[str, Any], usage: Any, content: str,
              reasoning: str) -> None:
        """One finished attempt with reported usage: compare with the static estimate."""
        if usage.prompt_method != "exact" or usage.completion_method != "exact":
            return
        static_prompt = tokens.prompt_tokens(body.get("messages") or [])
        if static_prompt:
            self.fit(model, "prompt").add(static_prompt, usage.prompt_tokens)
        thought = usage.reasoning_tokens or 0
        if reasoning and thought:
            self.fit(model, "reasoning").add(tokens.text_tokens(reasoning), thought)
        if content and (thought or not reasoning):
            self.fit(model, "content").add(tokens.text_tokens(content),
                                           usage.completion_tokens - thought)


CounterFor = Callable[[str], Counter | None]


def _no_counter(_model: str) -> Counter | None:
    return None


class Estimator:
    """Counts tokens the best way at hand (see the module docstring)."""

    def __init__(self, calibration: Calibration | None = None,
                 counter_for: CounterFor = _no_counter) -> None:
        self.calibration = calibration or Calibration()
        self.counter_for = counter_for

    def text(self, model: str, text: str, direction: str = "content") -> tuple[int, str]:
        if not text:
            return 0, "static"
        counter = self.counter_for(model)
        if counter is not None:
            try:
                return counter.count(text), counter.method
            except Exception:  # noqa: S110 - a counter that fails: the estimate below
                pass
        static = tokens.text_tokens(text)
        ratio = self.calibration.ratio(model, direction)
        if ratio is not None:
            return math.ceil(static * ratio), "calibrated"
        return math.ceil(static), "static"

    def prompt(self, body: dict[str, Any]) -> tuple[int, str]:
        model = str(body.get("model", ""))
        messages = body.get("messages") or []
        counter = self.counter_for(model)
        if counter is not None:
            try:
                counted = sum(counter.count(t) for t in message_texts(messages))
                framing = self.calibration.framing(model, len(messages))
                if framing is None:
                    framing = tokens.MESSAGE_OVERHEAD * len(messages)
                return math.ceil(counted + framing + media_tokens(messages)), counter.method
            except Exception:  # noqa: S110 - a counter that fails: the estimate below
                pass
        static = tokens.prompt_tokens(messages)
        ratio = self.calibration.ratio(model, "prompt")
        if ratio is not None:
            return math.ceil(static * ratio), "calibrated"
        return static, "static"

    def completion(self, model: str, content: str, reasoning: str
                   ) -> tuple[int, int | None, str]:
        """(completion tokens, reasoning tokens or None, method) for received text."""
        said, how = self.text(model, content, "content")
        if not reasoning:
            return said, None, how
        thought, how_r = self.text(model, reasoning, "reasoning")
        return said + thought, thought, weakest(how, how_r)


def weakest(*methods: str) -> str:
    """The least exact of several methods (the figure is only as good as its part)."""
    return max(methods, key=METHODS.index)


def message_texts(messages: list[dict[str, Any]]) -> list[str]:
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out += [str(p.get("text", "")) for p in content if p.get("type") == "text"]
    return out


def media_tokens(messages: list[dict[str, Any]]) -> int:
    total = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                kind = part.get("type")
                if kind == "image_url":
                    total += tokens.IMAGE_TOKENS
                elif kind != "text":
                    total += tokens.MEDIA_TOKENS
    return total
