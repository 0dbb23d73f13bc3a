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
# Common Chinese words, each one token of Qwen's vocabulary (checked with it): an
# answer of N of them is N tokens, as Model Studio would bill it (to ~2%: BPE
# merges a few across word boundaries), at ~1.8 characters a token.
CJK_VOCAB = (
    "我们 的 是 在 一个 有 不 了 人 这 中国 大 为 上 个 国家 和 地方 到 以 说 时候 要 就是 出 会 "
    "可以 也 你们 对 生活 能够 而 孩子 那么 得到 于 着 下 自己 之 年 过 发展 后来 作品 里 用 道理 "
    "行 所以 然后 家庭 种 事情 成功 方法 多 经济 什么 去 法律 学习 如果 都 同时 现在 当时 没有 "
    "动物 面对 起来 看到 一定 天气 分析 还是 进入 好的 小时 部分 其实 一些 主要 这样 理解 心里 "
    "她 本来 前面 开始 但是 因为 只是 从来 想要 实际 日本 文化 历史 社会 世界 工作 问题 时间 "
    "政府 公司 技术 研究 教育 经验 科学 市场 关系 国际 影响 环境 重要 提供 需要 服务 管理 系统 "
    "信息 过程 能力 活动 具有 建设 组织 思想 精神 传统 茶叶 贸易 城市 人民 北京 上海 中心 应该 "
    "通过 非常 已经 这些 他们 大家 朋友 老师 学生 生产 产品 企业 资源 人们 今天 明天 故事 音乐 "
    "艺术 自然 语言 文字 空间 发现 方面 条件 结构"
).split()
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
    continued: str | None = None  # the continuation form the request used
    echo: str = ""  # repeated before the first token (llama-server's prefill)
    speech: bool = False  # modalities has "audio": each token's speech follows it
    headers: dict[str, str] = field(default_factory=dict)  # [[header=Name:Value|...]]


@dataclass
class Config:
    delay: float = 0.0
    api_key: str | None = None
    rpm: float | None = None
    tpm: float | None = None
    default_len: int | None = None
    tick: float | None = None  # one shared timer for all streams (benchmarks)
    # the whole endpoint down: every chat request answered with this status
    # (503: a gateway whose backend is gone) while set, or for the next
    # ``down_for`` requests
    down: int | None = None
    down_for: int = 0
    continuation_forms: tuple[str, ...] = ("partial", "prefix", "continue_final_message",
                                           "prefill")


@dataclass
class Ledger:
    entries: list[dict[str, Any]] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    throttled: int = 0
    keys_seen: set[str] = field(default_factory=set)


def split_continuation(body: dict[str, Any]) -> tuple[list[dict[str, Any]],
                                                      tuple[str, str] | None]:
    """The request's own messages, and (form, text) when it continues an answer."""
    messages = list(body.get("messages") or [])
    if not messages or messages[-1].get("role") != "assistant":
        return messages, None
    last = messages.pop()
    form = ("partial" if last.get("partial") else "prefix" if last.get("prefix")
            else "continue_final_message" if body.get("continue_final_message") else "prefill")
    return messages, (form, str(last.get("content") or ""))


def request_key(body: dict[str, Any]) -> str:
    """Attempts of one request share a key, continuations included."""
    messages, _ = split_continuation(body)
    return hashlib.sha256(json.dumps([body.get("model"), messages], sort_keys=True).encode()
                          ).hexdigest()


def plan_for(body: dict[str, Any], attempt: int, config: Config) -> Plan:
    messages, continued = split_continuation(body)
    model = str(body.get("model", "qwen-plus"))
    text = json.dumps(messages, ensure_ascii=False, sort_keys=True)
    directives = dict(DIRECTIVE.findall(text))
    seed = hashlib.sha256((model + "\n" + text).encode()).digest()
    length = int(directives.get("len", config.default_len or 16 + seed[0] % 33))
    max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
    think = int(directives.get("think", 0))
    thinking = model.startswith(("qwq", "qvq")) or bool(body.get("enable_thinking"))
    if think == 0 and thinking:
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
            if cjk:  # one Qwen token a word, ~1.8 characters
                out.append(CJK_VOCAB[(state >> 33) % len(CJK_VOCAB)])
            elif i and (state >> 9) % 8 == 0:  # punctuation is a token of its own
                out.append(",." [(state >> 13) % 2])
            else:
                word = VOCAB[(state >> 33) % len(VOCAB)]
                out.append(word if i == 0 else " " + word)
        return out

    tokens, reasoning = words(length, 0), words(think, 0x5EED)
    kinds = [k.strip() for k in directives.get("json", "").split(",") if k.strip()]
    if kinds:  # an answer in JSON: this attempt's kind (the last one repeats)
        tokens = json_tokens(kinds[min(attempt, len(kinds)) - 1], words(length, 0x15), seed)
    if "loop" in directives:  # a degenerate loop: one 12-token sentence over and over
        start = int(directives["loop"])
        sentence = [" The", " answer", " is", " the", " same", " as", " before", ",", " and",
                    " so", " on", "."]
        tokens = tokens[:start] + [sentence[i % 12] for i in range(max(0, length - start))]
    echo = ""
    if continued is not None:
        form, prefix = continued
        if form in ("partial", "prefix") and thinking:
            fault = "refuse_continuation"  # Model Studio: no partial mode while thinking
        elif directives.get("nocontinue") or form not in config.continuation_forms:
            fault = "refuse_continuation"
        tokens, reasoning = continue_tokens(tokens, prefix), []
        echo = prefix if form == "prefill" else ""  # llama-server repeats the prefix
    finish = "stop"
    if max_tokens is not None and len(tokens) > int(max_tokens):
        tokens, finish = tokens[:int(max_tokens)], "length"
    return Plan(
        tokens=tokens, reasoning=reasoning, finish_reason=finish,
        delay=float(directives.get("delay", config.delay)), fault=fault,
        prompt_tokens=count_prompt_tokens(list(body.get("messages") or [])), model=model,
        replay=directives.get("replay"),
        headers=dict(h.split(":", 1) for h in directives.get("header", "").split("|") if h),
        continued=continued[0] if continued else None, echo=echo,
        speech="audio" in (body.get("modalities") or []),
    )


SPEECH_RATE = 24_000  # Hz, 16-bit mono PCM, as Model Studio streams Qwen-Omni's speech
SPEECH_SAMPLES = 480  # 20 ms of speech a text token
SPEECH_TOKENS = 2  # audio tokens billed a text token


def speech_pcm(token: str, index: int) -> bytes:
    """The speech of one token: 20 ms of a tone whose pitch comes from the
    token, so a stream's audio is deterministic and a seam would show."""
    import math
    import struct

    pitch = 200 + (sum(token.encode()) % 40) * 10
    start = index * SPEECH_SAMPLES
    return b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * pitch *
                                                          (start + n) / SPEECH_RATE)))
                    for n in range(SPEECH_SAMPLES))


def json_tokens(kind: str, text: list[str], seed: bytes) -> list[str]:
    """An answer of ``kind``: ``valid`` (an object of a name, an age and tags),
    ``fenced`` (the same in a ```json fence), ``violate`` (JSON, but the age is
    text), ``invalid`` (JSON cut off), ``prose`` (text before the JSON), or
    ``stall`` (whitespace, as JSON mode does when it stalls), in tokens of a
    few characters, so a stream cut anywhere is cut mid-JSON."""
    if kind == "stall":
        return ["  "] * max(len(text), 2000)
    value = {"name": "".join(text).strip(), "age": seed[2] % 90,
             "tags": [w.strip() for w in text[:3]]}
    if kind == "violate":
        value["age"] = f"{value['age']} years"
    doc = json.dumps(value, ensure_ascii=False, indent=1)
    if kind == "fenced":
        doc = f"```json\n{doc}\n```"
    elif kind == "invalid":
        doc = doc[:len(doc) // 2]
    elif kind == "prose":
        doc = "Sure! Here is the JSON you asked for:\n" + doc
    return [doc[i:i + 4] for i in range(0, len(doc), 4)]


def continue_tokens(tokens: list[str], prefix: str) -> list[str]:
    """The rest of the answer after ``prefix``, cut where the whole answer's
    tokens are cut; an answer that does not start with the prefix goes its own
    way (a seam bug shows as different text, never as the right one)."""
    whole = "".join(tokens)
    if not whole.startswith(prefix):
        return [" diverged", " from", " a", " prefix", " it", " never", " sent"]
    out, at = [], 0
    for token in tokens:
        end = at + len(token)
        if end > len(prefix):
            out.append(token[max(0, len(prefix) - at):])
        at = end
    return out
