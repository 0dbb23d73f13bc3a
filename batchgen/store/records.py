"""What the run store keeps and hands back, as plain frozen records.

They live here, beside the store, so that the store needs nothing from the
packages that fill it: the planner makes :data:`PlanRow` tuples, the stream
reader and the estimator make :class:`Usage`, continuation reads a
:class:`Resume`.
"""

from __future__ import annotations

from dataclasses import dataclass

# How a figure of a Usage was obtained, best first; the last three are estimates.
METHODS = ("exact", "derived", "tokenizer", "calibrated", "static")
ESTIMATED = frozenset({"tokenizer", "calibrated", "static"})

# A request as the store's `requests` table takes it:
# (id, position, fingerprint, model, body JSON, tags JSON or None)
PlanRow = tuple[str, int, str, str, str, str | None, str | None, str | None]


@dataclass(frozen=True)
class Usage:
    """Tokens of one attempt, as reported by the server or estimated."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    reasoning_tokens: int | None = None
    cached_tokens: int | None = None
    raw: str | None = None
    prompt_method: str = "exact"
    completion_method: str = "exact"
    audio_prompt_tokens: int | None = None  # of prompt_tokens: audio heard
    audio_completion_tokens: int | None = None  # of completion_tokens: speech said

    @property
    def estimated(self) -> bool:
        """True when some figure is not from the server (derived ones are)."""
        return self.prompt_method in ESTIMATED or self.completion_method in ESTIMATED


@dataclass(frozen=True)
class Resume:
    """Where an interrupted request goes on from: the answer so far."""

    parent: int  # the attempt whose text ends the chain
    text: str  # the whole answer so far (every attempt of the chain)
    tokens: int  # completion tokens those attempts generated (reported or estimated)
    depth: int  # continuations so far in the chain
    # the part of ``tokens`` the endpoint reported, and the text of the attempts
    # whose tokens were estimated (a tokenizer may count that text better)
    reported: int = 0
    estimated_text: str = ""
