"""batchgen.jsonfast writes and reads JSON exactly as the standard library does.

Stored fingerprints are hashes of canonical JSON: a run started by an older
batchgen must resume under this one, so not one byte may differ.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from batchgen.jobs.load import Overrides, load_job
from batchgen.jsonfast import canonical, loads


def stdlib(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def outcome(read: Any, raw: bytes) -> tuple[str, str]:
    """The value read, with its types (1, 1.0 and True differ), or the error."""
    try:
        return "value", repr(read(raw))
    except Exception as exc:  # the error itself is what is compared
        return type(exc).__name__, str(exc)


# any character, lone surrogates included (the standard library writes them)
text = st.text(st.characters(blacklist_categories=()), max_size=12)
scalars = (st.none() | st.booleans() | st.integers() | text
           | st.floats(allow_nan=True, allow_infinity=True))
values = st.recursive(
    scalars,
    lambda inner: (st.lists(inner, max_size=4) | st.tuples(inner, inner)
                   | st.dictionaries(text, inner, max_size=4)),
    max_leaves=20,
)


@settings(max_examples=800, deadline=None)
@given(values)
def test_canonical_is_the_standard_librarys_json_byte_for_byte(obj: Any) -> None:
    assert canonical(obj) == stdlib(obj)


def test_floats_at_every_scale_are_written_as_python_writes_them() -> None:
    edges = [0.0, -0.0, 1e-4, 1e16, 0.7, 1.0, 2.5, 123456.789, 5e-324, 1.7976931348623157e308]
    for edge in list(edges):
        edges += [math.nextafter(edge, math.inf), math.nextafter(edge, -math.inf)]
    scales = [m * 10.0**e for e in range(-30, 31) for m in (1.0, 1.2345678901234567, 9.99)]
    for x in edges + scales + [math.nan, math.inf]:
        for value in (x, -x, [x], {"temperature": x}):
            assert canonical(value) == stdlib(value), repr(value)


def test_what_orjson_writes_otherwise_takes_the_standard_library() -> None:
    class Text(str):
        pass

    assert canonical({"a": 2**64, "b": -(2**63) - 1}) == stdlib({"a": 2**64, "b": -(2**63) - 1})
    assert canonical({"s": "\ud800"}) == stdlib({"s": "\ud800"})  # lone surrogate
    assert canonical([Text("x")]) == '["x"]'
    deep: Any = "x"
    for _ in range(300):
        deep = [deep]
    assert canonical(deep) == stdlib(deep)
    for bad in ({1: "int key"}, {"t": {1, 2}}, {"d": b"bytes"}):
        try:
            stdlib(bad)
        except TypeError as exc:
            expected = str(exc)
        else:
            expected = stdlib(bad)
        try:
            assert canonical(bad) == expected
        except TypeError as exc:
            assert str(exc) == expected


@settings(max_examples=500, deadline=None)
@given(values, st.booleans())
def test_a_line_reads_as_json_loads_reads_it(obj: Any, ascii_only: bool) -> None:
    raw = json.dumps(obj, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    assert outcome(loads, raw) == outcome(json.loads, raw)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=40), st.integers(0, 40))
def test_a_damaged_line_fails_or_reads_as_json_loads_says(junk: bytes, at: int) -> None:
    raw = json.dumps({"prompt": "x", "n": 12345678901234567890, "t": 0.5}).encode()
    damaged = raw[:at] + junk + raw[at:]
    assert outcome(loads, damaged) == outcome(json.loads, damaged)


def test_edge_lines_read_as_json_loads_reads_them() -> None:
    lines = [b'{"a":18446744073709551616}', b'{"a":-9223372036854775809}',
             b'{"a":9223372036854775808}', b'{"a":1e400}', b'{"a":NaN}', b'{"a":-Infinity}',
             b'{"a":"\\ud800"}', b'\xef\xbb\xbf{"a":1}', b'{"a":"\xff"}', b'{"a":1,"b":2,"a":3}',
             b'{"a":"x\ty"}', b'{"a":1,}', b'', b'  {"a":[1.0,2,true,null]}\r\n']
    for raw in lines:
        assert outcome(loads, raw) == outcome(json.loads, raw), raw


# Written by batchgen 0c1c31b, whose canonical JSON was the standard library's:
# a run it started must resume now with the same ids and fingerprints.
GOLDEN_JOB = r"""{"prompt": "Résumé ☃ \u2028 tab\there \"quoted\" 😀", "temperature": 0.7, "top_p": 1e-05, "max_tokens": 4000, "extra_body": {"enable_thinking": true, "seed": 12345678901234567890, "z": [1.5e16, -0.0, 0.0001, null], "a": {"nested": "x"}}}
{"id": "given", "messages": [{"role": "user", "content": [{"type": "text", "text": "describe"}, {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}], "temperature": 1.0, "presence_penalty": -0.5}
{"prompt": "plain", "system": "be brief"}
{"prompt": "small and large floats, no wide int", "top_p": 1e-05, "temperature": 0.0001, "extra_body": {"x": 1.5e16, "y": [-0.0, 2.5e-7, 9007199254740993]}}
"""  # noqa: E501
GOLDEN = [
    ("p-3e89a5a4d23b", "583a1d95705dbd0bf2477e75e4a74b6cde3d483db83dfa74858c0084a4cd3354"),
    ("given", "405e263dc516e25a4e7e1e68e35f327eb0fb331ff28de7c2b96488112bb4c431"),
    ("p-8216f41fcc10", "9dfd55823e85cd74becb66ef9e2cbdc089406f0abc83e6e10f5fda510dc86f16"),
    ("p-c8e2568b5091", "bd863b7888d68fc38c3c56cc99eab6c2d47de93806b3f389d1ee1c3184adfaad"),
]
GOLDEN_PLAN = "f7f6fc5e8708921320327b798ca1b846dac950a9f9b74df8d79405ca692b5fbe"


def test_ids_and_fingerprints_are_those_earlier_versions_stored(tmp_path: Path) -> None:
    path = tmp_path / "job.jsonl"
    path.write_text(GOLDEN_JOB, encoding="utf-8")
    job = load_job(path, Overrides(model="qwen-plus"))
    assert [(r.id, r.fingerprint) for r in job.requests()] == GOLDEN
    assert job.info.plan_digest == GOLDEN_PLAN
