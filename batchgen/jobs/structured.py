"""``schema:`` and ``schema_mode:``: an answer that must be JSON fitting a schema.

A schema is a JSON Schema (Draft 2020-12), inline or a ``.json`` file next to
the job file, checked when the job is loaded (jsonschema-rs). How the request asks for it:

- ``json_schema``: ``response_format: {type: json_schema, json_schema: {name,
  schema, strict: true}}`` — the endpoint holds the model to the schema;
- ``json_object``: ``response_format: {type: json_object}``, and the system
  message names JSON and gives the schema when the messages do not mention
  JSON (Model Studio requires the word);
- ``prompt``: no ``response_format``; the schema goes into the system message;
- ``auto`` (the default): per endpoint, the best it is known to take —
  ``json_schema`` on OpenAI, and on Model Studio for the models its
  structured-output page names (:func:`model_studio_schema`), for a schema
  strict mode takes (:func:`strict_subset`; ``json_object`` for another,
  which would be refused with a 400 on every request); ``json_schema`` on the
  local llama-server (a grammar from the schema); ``json_object`` on Model
  Studio's other models and DeepSeek;
  ``prompt`` for a request whose model thinks (:func:`batchgen.jobs.thinking.thinks`:
  Model Studio takes no ``response_format`` then) and for endpoints batchgen
  does not know.

Whatever the mode, the answer is checked against the schema when it ends
(:mod:`batchgen.engine.structured`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from batchgen.jobs.thinking import thinks

MODES = ("auto", "json_schema", "json_object", "prompt")
SCHEMA_NAME = "answer"


class SchemaProblem(ValueError):
    """A schema that cannot be used: what is wrong and where."""


def load_schema(value: dict[str, Any] | str, base: Path,
                cache: dict[str, dict[str, Any]] | None = None,
                checked: set[str] | None = None) -> dict[str, Any]:
    """The schema ``value`` names (inline, or a ``.json`` path relative to
    ``base``), checked as a Draft 2020-12 schema (each schema once: checking
    one against the metaschema takes milliseconds)."""
    if isinstance(value, str):
        if cache is not None and value in cache:
            return cache[value]
        path = Path(value)
        if path.is_absolute() or ".." in path.parts:
            raise SchemaProblem("a schema file is a path inside the job file's folder "
                                "(no absolute paths, no '..')")
        full = (base / path).resolve()
        if not full.is_relative_to(base.resolve()):  # a link to a file elsewhere
            raise SchemaProblem(f"{value} resolves to {full}, outside the job file's folder; "
                                "put the schema there")
        try:
            schema = json.loads(full.read_text(encoding="utf-8-sig"))
        except OSError as exc:
            raise SchemaProblem(f"{value}: cannot read: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise SchemaProblem(f"{value}: not JSON: {exc}") from None
        if not isinstance(schema, dict):
            raise SchemaProblem(f"{value}: a schema is a JSON object")
        check_schema(schema, value)
        if cache is not None:
            cache[value] = schema
        return schema
    key = json.dumps(value, sort_keys=True, ensure_ascii=False) if checked is not None else ""
    if checked is None or key not in checked:
        check_schema(value, "the schema")
        if checked is not None:
            checked.add(key)
    return value


def check_schema(schema: dict[str, Any], what: str) -> None:
    """``schema`` against the Draft 2020-12 metaschema (jsonschema-rs: a Rust
    validator, ~100 times the pure-Python one's speed; imported here, where a
    job has a schema)."""
    import jsonschema_rs

    try:
        jsonschema_rs.meta.validate(schema)
    except jsonschema_rs.ValidationError as exc:
        at = "/" + "/".join(str(p) for p in exc.instance_path)
        raise SchemaProblem(f"{what} is not a valid JSON Schema (Draft 2020-12) at "
                            f"{at}: {exc.message}") from None
    except (ValueError, jsonschema_rs.ReferencingError) as exc:
        raise SchemaProblem(f"{what} cannot be used: {exc}") from None


# keywords OpenAI's strict mode refuses (its "supported schemas" list the rest)
NOT_STRICT = frozenset({
    "allOf", "oneOf", "not", "if", "then", "else", "dependentRequired", "dependentSchemas",
    "patternProperties", "unevaluatedProperties", "propertyNames", "minProperties",
    "maxProperties", "unevaluatedItems", "contains", "minContains", "maxContains",
    "uniqueItems"})


def strict_subset(schema: dict[str, Any]) -> bool:
    """Whether OpenAI's strict structured outputs take ``schema``: an object at
    the root; every object lists all its properties as required and sets
    ``additionalProperties: false``; none of the keywords it refuses."""
    if schema.get("type") != "object":
        return False

    def fits(node: Any) -> bool:
        if not isinstance(node, dict):
            return isinstance(node, bool)  # true / false schemas
        if NOT_STRICT & node.keys():
            return False
        kind = node.get("type")
        props = node.get("properties") or {}
        an_object = kind == "object" or (isinstance(kind, list) and "object" in kind) or props
        if an_object and (node.get("additionalProperties") is not False
                          or set(node.get("required") or ()) != set(props)):
            return False
        subschemas = [*props.values(), *(node.get("$defs") or {}).values(),
                      *(node.get("definitions") or {}).values(),
                      *(node.get("anyOf") or ()), *(node.get("prefixItems") or ())]
        if "items" in node:
            subschemas.append(node["items"])
        return all(fits(sub) for sub in subschemas)

    return fits(schema)


def auto_mode(base_url: str, local: bool, body: dict[str, Any],
              schema: dict[str, Any] | None = None) -> str:
    """The mode ``auto`` stands for on this endpoint, for this request."""
    host = (urlsplit(base_url).hostname or "").lower()
    if local:
        return "json_schema"
    if host == "api.openai.com":  # its reasoning models take a response_format too
        return "json_schema" if schema is None or strict_subset(schema) else "json_object"
    if thinks(body):  # Model Studio takes no response_format while a model thinks
        return "prompt"
    if host.endswith(("dashscope.aliyuncs.com", "dashscope-intl.aliyuncs.com")):
        if schema is not None and model_studio_schema(str(body.get("model", ""))) \
                and strict_subset(schema):
            return "json_schema"
        return "json_object"
    if host == "api.deepseek.com":
        return "json_object"
    return "prompt"


# Model Studio's models that take json_schema (its structured-output page):
# these names, and their dated snapshots from the date given on
MODEL_STUDIO_SCHEMA_SINCE = {"qwen-plus": "2025-07-28", "qwen-flash": "2025-07-28",
                             "qwen3-max": "2025-09-23"}
MODEL_STUDIO_SCHEMA_NAMES = frozenset({"qwen-plus-latest", "deepseek-v3.2"})
_SNAPSHOT = re.compile(r"(.+)-(\d{4}-\d{2}-\d{2})")


def model_studio_schema(model: str) -> bool:
    """Whether Model Studio takes ``response_format: json_schema`` for ``model``."""
    if model in MODEL_STUDIO_SCHEMA_SINCE or model in MODEL_STUDIO_SCHEMA_NAMES:
        return True
    dated = _SNAPSHOT.fullmatch(model)
    since = MODEL_STUDIO_SCHEMA_SINCE.get(dated.group(1)) if dated else None
    return since is not None and dated is not None and dated.group(2) >= since


INSTRUCTION = ("Answer with one JSON value only — no prose before or after it — that "
               "fits this JSON Schema:\n")


def instruction(schema: dict[str, Any]) -> str:
    return INSTRUCTION + json.dumps(schema, ensure_ascii=False, indent=1)


def apply(request: dict[str, Any], schema: dict[str, Any], mode: str) -> dict[str, Any]:
    """``request`` (model, messages, parameters) asking for the schema in ``mode``."""
    out = dict(request)
    messages = [dict(m) for m in request["messages"]]
    if mode == "json_schema":
        out["response_format"] = {"type": "json_schema", "json_schema": {
            "name": SCHEMA_NAME, "schema": schema, "strict": True}}
        return out
    if mode == "json_object":
        out["response_format"] = {"type": "json_object"}
        if any("json" in _text(m).lower() for m in messages):
            return out
    out["messages"] = _with_system(messages, instruction(schema))
    return out


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _with_system(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    for message in messages:
        if message.get("role") in ("system", "developer") and isinstance(
                message.get("content"), str):
            message["content"] = f"{message['content']}\n\n{text}"
            return messages
    return [{"role": "system", "content": text}, *messages]


THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def after_thinking(text: str) -> str:
    """``text`` without the ``<think>...</think>`` block a reasoning model
    served without a reasoning parser writes into its content first."""
    stripped = text.lstrip()
    if stripped.startswith(THINK_OPEN):
        end = stripped.find(THINK_CLOSE)
        if end >= 0:
            return stripped[end + len(THINK_CLOSE):]
    return text


def unfenced(text: str) -> str:
    """An answer's text without a leading ``<think>`` block or a Markdown code
    fence around it (```` ```json ... ``` ````): what is parsed as its JSON."""
    stripped = after_thinking(text).strip()
    if not stripped.startswith("```"):
        return stripped
    first_newline = stripped.find("\n")
    if first_newline < 0:
        return stripped
    body = stripped[first_newline + 1:]
    end = body.rfind("```")
    return (body[:end] if end >= 0 else body).strip()


def answer_value(text: str) -> Any:
    """The JSON value of an answer that was checked valid."""
    return json.loads(unfenced(text))


def as_written(body: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """A body :func:`apply` made, back in job-file form: ``schema`` and the
    ``schema_mode`` it was sent in, no ``response_format``, the schema's
    instruction taken out of the system message (a re-run adds it again)."""
    out = dict(body)
    kind = (out.pop("response_format", None) or {}).get("type")
    out["schema"] = schema
    out["schema_mode"] = {"json_schema": "json_schema", "json_object": "json_object"}.get(
        str(kind), "prompt")
    messages = []
    for message in out.get("messages") or []:
        content = message.get("content")
        if message.get("role") in ("system", "developer") and isinstance(content, str):
            if content.startswith(INSTRUCTION):
                continue  # the instruction was the whole system message
            at = content.rfind(f"\n\n{INSTRUCTION}")
            messages.append({**message, "content": content[:at] if at >= 0 else content})
        else:
            messages.append(message)
    out["messages"] = messages
    return out
