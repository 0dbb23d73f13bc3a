"""Cost truth: after a run, every estimated figure made as exact as can be known.

Runs at the end of every run that called the API (``refine``), with the
endpoint still up (llama-server's ``/tokenize``), and writes its results into
the run store, so ``batchgen report`` later shows the same figures:

1. **Learn** from finished requests (the latest ``SAMPLE`` per model, with
   reported usage): the calibration ratios (reported / static estimate) per
   direction, and, where a real tokenizer counts the model's text, the message
   framing (reported prompt tokens minus the text's own tokens, against the
   number of messages: the chat template, a system prompt the provider adds).
2. **Re-estimate** every attempt whose usage is not exact:
   - its prompt tokens are **derived** when another attempt of the same
     request with the same messages (same version, same continuation point)
     had them reported — the server's own figure, not an estimate;
   - otherwise, and for the completion tokens of the text it received, the
     best of tokenizer, calibrated and static (``batchgen.tokens.estimator``).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from batchgen.store.records import Usage
from batchgen.store.runstore import RunStore
from batchgen.tokens.estimator import (
    Calibration,
    Estimator,
    Fit,
    media_tokens,
    message_texts,
    weakest,
)

log = logging.getLogger(__name__)

SAMPLE = 200  # finished requests per model a calibration learns from


def refine(store: RunStore, estimator: Estimator) -> int:
    """Learn, then re-estimate. Returns how many usage rows changed.

    With nothing estimated, only the calibration is learned (no tokenizer is
    loaded for it: the framing it would learn serves estimates only)."""
    if not store.has_estimated_usage():
        estimator = Estimator(estimator.calibration)  # no tokenizer: nothing to count
    estimator.calibration = learn(store, estimator)
    save_calibration(store, estimator.calibration)
    changed = reestimate(store, estimator)
    store.commit()
    return changed


def learn(store: RunStore, estimator: Estimator) -> Calibration:
    calibration = Calibration()
    for model in store.finished_models():
        counter = estimator.counter_for(model)
        for row in store.reported_samples(model, SAMPLE):
            body = json.loads(row["body"])
            usage = Usage(row["prompt_tokens"], row["completion_tokens"],
                          row["prompt_tokens"] + row["completion_tokens"],
                          row["reasoning_tokens"], row["cached_tokens"])
            calibration.learn(model, body, usage, row["content"] or "", row["reasoning"] or "")
            if counter is not None:
                messages = body.get("messages") or []
                try:
                    counted = sum(counter.count(t) for t in message_texts(messages)) \
                        + media_tokens(messages)
                except Exception:  # a tokenizer that fails teaches nothing
                    log.info("could not count a prompt of %s", model, exc_info=True)
                    counter = None
                    continue
                calibration.fit(model, "framing").add(len(messages),
                                                      row["prompt_tokens"] - counted)
    return calibration


def reestimate(store: RunStore, estimator: Estimator) -> int:
    rows = store.usage_to_refine()
    updates: list[tuple[int, Usage]] = []
    for row in rows:
        body: dict[str, Any] = json.loads(row["body"])
        content, reasoning = store.attempt_text(row["id"])
        sent = body
        if row["continues"]:  # its prompt held the answer it went on from
            prefix = store.chain_text(row["continues"])
            sent = {**body, "messages": [*body["messages"],
                                         {"role": "assistant", "content": prefix}]}
            if row["status"] == "done":  # a finished continuation stores the whole answer
                content = content[row["prefix_chars"] or 0:]
        prompt, how_prompt = _prompt(store, row, sent, estimator)
        completion, thought, how = row["completion_tokens"], row["reasoning_tokens"], \
            row["completion_method"] or "static"
        if how != "exact":
            completion, thought, how = estimator.completion(row["model"], content, reasoning)
        usage = Usage(prompt, completion, prompt + completion, thought, row["cached_tokens"],
                      row["raw"], prompt_method=how_prompt, completion_method=how)
        old = (row["prompt_tokens"], row["completion_tokens"], row["prompt_method"],
               row["completion_method"])
        if old != (usage.prompt_tokens, usage.completion_tokens, how_prompt, how):
            updates.append((row["id"], usage))
    store.put_usage(updates)
    return len(updates)


def _prompt(store: RunStore, row: Any, sent: dict[str, Any], estimator: Estimator
            ) -> tuple[int, str]:
    if row["prompt_method"] == "exact":
        return int(row["prompt_tokens"]), "exact"
    # the same messages were reported for another attempt of this request
    reported = store.reported_prompt(row["request_id"], row["fingerprint"], row["mode"],
                                     row["id"], row["continues"])
    if reported is not None:
        return reported, "derived"
    if row["continues"]:
        # the request's own prompt, reported for a fresh attempt, plus the answer so far
        base = store.reported_fresh_prompt(row["request_id"], row["fingerprint"])
        if base is not None:
            prefix = sent["messages"][-1]["content"]
            counted, how = estimator.text(row["model"], prefix, "content")
            framing = estimator.calibration.framing(row["model"], 1) or 0.0
            return int(base + counted + framing), weakest("derived", how)
    return estimator.prompt(sent)


def load_calibration(store: RunStore) -> Calibration:
    fits = {(model, direction): Fit(samples, sx, sy, sxx, sxy)
            for model, direction, samples, sx, sy, sxx, sxy in store.calibration_rows()}
    return Calibration(fits)

def save_calibration(store: RunStore, calibration: Calibration) -> None:
    store.save_calibration(
        [(model, direction, f.samples, f.sx, f.sy, f.sxx, f.sxy)
         for (model, direction), f in calibration.fits.items() if f.samples])
