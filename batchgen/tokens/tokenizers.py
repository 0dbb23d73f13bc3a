"""Real tokenizers, where one is available offline.

- **Qwen** (qwen-plus, qwen-max, qwen-flash, qwen-turbo, qwq, qvq, qwen2.5 /
  qwen3 open source, qwen-vl...): the byte-level BPE vocabulary Alibaba ships
  as ``dashscope/resources/qwen.tiktoken`` inside the ``dashscope`` wheel,
  run by ``tiktoken``. The file is found through package metadata, without
  importing ``dashscope`` (whose declared dependencies are a web-server stack
  batchgen does not need: install it with ``pip install --no-deps dashscope``;
  ``pip install 'batchgen[qwen]'`` brings ``tiktoken``). Qwen 1 to 3 share
  this vocabulary and its pre-tokenizer split; text is NFC-normalised first,
  as Qwen's tokenizer does.
- **The local endpoint**: llama-server's own ``POST /tokenize``.

A :class:`Counter` counts the tokens of a text. Which counter fits a model is
:func:`counter_for`'s decision; everything else falls back to the calibrated
estimate (``batchgen.tokens.estimator``).
"""

from __future__ import annotations

import base64
import json
import re
import threading
import unicodedata
import urllib.request
from pathlib import Path
from typing import Any, Protocol

VOCAB_PACKAGE = "dashscope"
VOCAB_FILE = "qwen.tiktoken"
# Qwen's pre-tokenizer: contractions, letters with one leading non-letter,
# single digits, punctuation runs, newlines, spaces.
QWEN_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
              r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
QWEN_SPECIAL_START = 151643
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>",
                 *(f"<|extra_{i}|>" for i in range(205)))
QWEN_MODELS = re.compile(r"^(qwen|qwq|qvq)", re.IGNORECASE)
_CHUNK = 100_000  # tiktoken's recursive merge can overflow on huge inputs


class Counter(Protocol):
    method: str

    def count(self, text: str) -> int: ...


def vocab_path() -> Path | None:
    """qwen.tiktoken inside the installed dashscope wheel, if any."""
    from importlib import metadata  # ~3 ms at start-up otherwise; only a count needs it

    try:
        dist = metadata.distribution(VOCAB_PACKAGE)
    except metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if str(file).endswith(VOCAB_FILE):
            path = Path(str(dist.locate_file(file)))
            return path if path.is_file() else None
    return None


class QwenCounter:
    """Qwen's tokenizer (tiktoken + the dashscope vocabulary)."""

    method = "tokenizer"

    def __init__(self, vocab: Path) -> None:
        import tiktoken

        ranks: dict[bytes, int] = {}
        for line in vocab.read_bytes().splitlines():
            if line:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
        specials = {t: QWEN_SPECIAL_START + i for i, t in enumerate(QWEN_SPECIALS)}
        self._encoding = tiktoken.Encoding("qwen", pat_str=QWEN_SPLIT, mergeable_ranks=ranks,
                                           special_tokens=specials)

    def count(self, text: str) -> int:
        text = unicodedata.normalize("NFC", text)
        total = 0
        for start in range(0, len(text), _CHUNK):
            # special-token text in a prompt is counted as the plain text it is
            total += len(self._encoding.encode_ordinary(text[start:start + _CHUNK]))
        return total


_qwen_lock = threading.Lock()
_qwen_state: dict[str, QwenCounter | None] = {}


def qwen_counter(wait: bool = True) -> QwenCounter | None:
    """The Qwen tokenizer, loaded once (about half a second), or None when it
    is not installed — or, with ``wait=False``, not loaded yet."""
    if "counter" in _qwen_state:
        return _qwen_state["counter"]
    if not wait:
        return None
    with _qwen_lock:
        if "counter" not in _qwen_state:
            path = vocab_path()
            counter = None
            if path is not None:
                try:
                    counter = QwenCounter(path)
                except ImportError:  # tiktoken missing: pip install 'batchgen[qwen]'
                    counter = None
            _qwen_state["counter"] = counter
    return _qwen_state["counter"]


class ServerCounter:
    """llama-server's ``POST /tokenize``: the server's own tokens, exactly."""

    method = "tokenizer"

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        root = base_url.rstrip("/")
        self.url = (root[:-3] if root.endswith("/v1") else root) + "/tokenize"
        self.timeout = timeout
        # direct: an http_proxy of the environment cannot reach this loopback server
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def count(self, text: str) -> int:
        request = urllib.request.Request(  # noqa: S310 - our own loopback server's URL
            self.url, data=json.dumps({"content": text}).encode(),
            headers={"Content-Type": "application/json"})
        with self.opener.open(request, timeout=self.timeout) as response:
            data: Any = json.loads(response.read())
        return len(data["tokens"])


def counter_for(model: str, local_url: str | None = None, wait: bool = True
                ) -> Counter | None:
    """The real tokenizer for ``model`` on this endpoint, if one is at hand."""
    if local_url is not None:
        return ServerCounter(local_url)
    if QWEN_MODELS.match(model):
        return qwen_counter(wait)
    return None
