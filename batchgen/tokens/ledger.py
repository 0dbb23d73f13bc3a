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

from batchgen.store.runstore import RunStore
from batchgen.tokens.estimator import (
    Calibration,
    Estimator,
    Fit,
    media_tokens,
    message_texts,
    weakest,
)
from batchgen.tokens.usage import Usage

log = logging.getLogger(__name__)

SAMPLE = 200  # finished requests per model a calibration learns from


def refine(store: RunStore, estimator: Estimator) -> int:
    """Learn, then re-estimate. Returns how many usage rows changed.

    With nothing estimated, only the calibration is learned (no tokenizer is
    loaded for it: the framing it would learn serves estimates only)."""
    if not store.db.execute("SELECT 1 FROM usage WHERE estimated = 1 LIMIT 1").fetchone():
        estimator = Estimator(estimator.calibration)  # no tokenizer: nothing to count
    estimator.calibration = learn(store, estimator)
    save_calibration(store, estimator.calibration)
    changed = reestimate(store, estimator)
    store.commit()
    return changed


def learn(store: RunStore, estimator: Estimator) -> Calibration:
    calibration = Calibration()
    models = [r[0] for r in store.db.execute(
        "SELECT DISTINCT model FROM attempts WHERE status = 'done'")]
    for model in models:
        counter = estimator.counter_for(model)
        for row in store.iterate(
            "SELECT r.body, s.content, s.reasoning, u.prompt_tokens, u.completion_tokens, "
            "u.reasoning_tokens, u.cached_tokens FROM attempts a "
            "JOIN requests r ON r.id = a.request_id "
            "JOIN usage u ON u.attempt_id = a.id "
            "LEFT JOIN segments s ON s.attempt_id = a.id AND s.seq = 0 "
            "WHERE a.status = 'done' AND a.mode = 'fresh' AND a.model = ? "
            "AND u.estimated = 0 AND COALESCE(u.prompt_method, 'exact') = 'exact' "
            "ORDER BY a.id DESC LIMIT ?", (model, SAMPLE)
        ):
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
    rows = store.query(
        "SELECT a.id, a.request_id, a.fingerprint, a.model, a.mode, a.continues, a.status, "
        "a.prefix_chars, r.body, u.prompt_tokens, u.completion_tokens, u.total_tokens, "
        "u.reasoning_tokens, u.cached_tokens, u.raw, u.prompt_method, u.completion_method "
        "FROM attempts a JOIN usage u ON u.attempt_id = a.id "
        "JOIN requests r ON r.id = a.request_id "
        "WHERE u.estimated = 1 OR u.prompt_method = 'derived'"
    )
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
    reported = store.db.execute(
        "SELECT u.prompt_tokens FROM attempts a JOIN usage u ON u.attempt_id = a.id "
        "WHERE a.request_id = ? AND a.fingerprint = ? AND a.mode = ? AND a.id != ? "
        "AND a.continues IS ? AND COALESCE(u.prompt_method, "
        "CASE u.estimated WHEN 0 THEN 'exact' ELSE 'static' END) = 'exact' "
        "ORDER BY a.id DESC LIMIT 1",
        (row["request_id"], row["fingerprint"], row["mode"], row["id"], row["continues"]),
    ).fetchone()
    if reported is not None:
        return int(reported[0]), "derived"
    if row["continues"]:
        # the request's own prompt, reported for a fresh attempt, plus the answer so far
        base = store.db.execute(
            "SELECT u.prompt_tokens FROM attempts a JOIN usage u ON u.attempt_id = a.id "
            "WHERE a.request_id = ? AND a.fingerprint = ? AND a.mode = 'fresh' "
            "AND u.estimated = 0 ORDER BY a.id DESC LIMIT 1",
            (row["request_id"], row["fingerprint"])).fetchone()
        if base is not None:
            prefix = sent["messages"][-1]["content"]
            counted, how = estimator.text(row["model"], prefix, "content")
            framing = estimator.calibration.framing(row["model"], 1) or 0.0
            return int(base[0] + counted + framing), weakest("derived", how)
    return estimator.prompt(sent)


def load_calibration(store: RunStore) -> Calibration:
    fits = {(model, direction): Fit(samples, sx, sy, sxx, sxy)
            for model, direction, samples, sx, sy, sxx, sxy in store.db.execute(
                "SELECT model, direction, samples, sx, sy, sxx, sxy FROM calibration")}
    return Calibration(fits)

def save_calibration(store: RunStore, calibration: Calibration) -> None:
    store.db.execute("DELETE FROM calibration")
    store.db.executemany(
        "INSERT INTO calibration VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(model, direction, f.samples, f.sx, f.sy, f.sxx, f.sxy)
         for (model, direction), f in calibration.fits.items() if f.samples])
