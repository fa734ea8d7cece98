"""JSON schemas of the agents' answers, and parsing + validation of what a model actually returned."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from reaseq.knowledge.records import (
    DIMENSION_NAME_PATTERN,
    Dimension,
    FieldValue,
    KnowledgeSchema,
)

_FENCE = re.compile(r"^```[A-Za-z0-9_-]*\s*\n?(.*?)\n?```$", re.DOTALL)
_DIMENSION_NAME = re.compile(DIMENSION_NAME_PATTERN)


class OutputError(ValueError):
    """A model answer that is not the JSON object asked for (the message is fed back for repair)."""


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    # Every key required and no others: what strict OpenAI-style structured output and GBNF converters accept.
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


@dataclass(frozen=True)
class Limits:
    """Length caps written into the answer schemas (None: no cap); grammar-constrained backends enforce them.

    Small local models ramble: a cap on reasoning and field lengths bounds the tokens (and time) per call.
    """

    reasoning_chars: int | None = None
    value_chars: int | None = None
    list_items: int | None = None


NO_LIMITS = Limits()


def _string(max_chars: int | None = None) -> dict[str, Any]:
    return {"type": "string", "maxLength": max_chars} if max_chars else {"type": "string"}


def _string_list(limits: Limits) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "array", "items": _string(limits.value_chars)}
    return {**out, "maxItems": limits.list_items} if limits.list_items else out


def fields_json_schema(schema: KnowledgeSchema, limits: Limits = NO_LIMITS) -> dict[str, Any]:
    """JSON schema of a knowledge `fields` object for this schema."""
    return _object({d.name: _string(limits.value_chars) if d.type == "text" else _string_list(limits) for d in schema.dimensions})


def planner_json_schema(limits: Limits = NO_LIMITS, min_dimensions: int = 1, max_dimensions: int | None = None) -> dict[str, Any]:
    """JSON schema of the planner's answer (reasoning first, so the model thinks before it decides)."""
    name = {"type": "string", "pattern": DIMENSION_NAME_PATTERN}
    description = {"type": "string", "minLength": 1, **({"maxLength": limits.value_chars} if limits.value_chars else {})}
    dimension = _object({"name": name, "description": description, "type": {"type": "string", "enum": ["text", "list"]}})
    # The count and the name pattern are in the schema too, so grammar-constrained decoding cannot miss them.
    dimensions: dict[str, Any] = {"type": "array", "items": dimension, "minItems": min_dimensions}
    if max_dimensions is not None:
        dimensions["maxItems"] = max_dimensions
    return _object({"reasoning": _string(limits.reasoning_chars), "dimensions": dimensions})


def analyst_json_schema(schema: KnowledgeSchema, limits: Limits = NO_LIMITS) -> dict[str, Any]:
    """JSON schema of an analyst's answer."""
    return _object({"reasoning": _string(limits.reasoning_chars), "fields": fields_json_schema(schema, limits)})


def critic_json_schema(limits: Limits = NO_LIMITS) -> dict[str, Any]:
    """JSON schema of the critic's answer."""
    issues = _string_list(limits)
    return _object({"reasoning": _string(limits.reasoning_chars), "issues": issues, "confidence": {"type": "number"}, "needs_revision": {"type": "boolean"}})


def writer_json_schema(schema: KnowledgeSchema, limits: Limits = NO_LIMITS) -> dict[str, Any]:
    """JSON schema of the writer's answer."""
    return _object({"fields": fields_json_schema(schema, limits)})


def extract_json(text: str) -> dict[str, Any]:
    """The JSON object in a model answer (tolerating code fences and text around it)."""
    stripped = text.strip()
    if not stripped:
        raise OutputError("the answer was empty; expected a JSON object")
    fenced = _FENCE.match(stripped)
    if fenced:
        stripped = fenced.group(1).strip()
    # strict=False: raw newlines inside strings (which some grammar-constrained decoders let through) are kept.
    decoder = json.JSONDecoder(strict=False)
    try:
        value = decoder.decode(stripped)
    except json.JSONDecodeError as exc:
        start = stripped.find("{")
        if start < 0:
            raise OutputError(f"the answer is not JSON ({exc.msg}) and contains no '{{'") from None
        try:
            value, _ = decoder.raw_decode(stripped, start)
        except json.JSONDecodeError as inner:
            raise OutputError(f"the answer is not valid JSON ({inner.msg} at position {inner.pos})") from None
    if not isinstance(value, dict):
        raise OutputError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _clean(value: str) -> str:
    return " ".join(value.split())


def validate_fields(data: Any, schema: KnowledgeSchema) -> dict[str, FieldValue]:
    """Check a `fields` object against the schema and normalise whitespace; unknown keys are dropped."""
    if not isinstance(data, dict):
        raise OutputError("'fields' must be a JSON object")
    missing = [name for name in schema.names if name not in data]
    if missing:
        raise OutputError(f"'fields' lacks the dimensions {missing}; it needs exactly {schema.names}")
    out: dict[str, FieldValue] = {}
    for dim in schema.dimensions:
        value = data[dim.name]
        if dim.type == "text":
            if not isinstance(value, str):
                raise OutputError(f"'fields.{dim.name}' must be a string")
            out[dim.name] = _clean(value)
        else:
            if isinstance(value, str):  # a lone phrase where a list was asked: keep it, as a one-element list
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise OutputError(f"'fields.{dim.name}' must be a list of strings")
            out[dim.name] = [c for c in (_clean(v) for v in value) if c]
    if not any(out.values()):
        raise OutputError("every field is empty; fill at least one dimension from the metadata")
    return out


def _reasoning(data: dict[str, Any]) -> str:
    value = data.get("reasoning", "")
    if not isinstance(value, str):
        raise OutputError("'reasoning' must be a string")
    return value.strip()


def parse_analyst(text: str, schema: KnowledgeSchema) -> dict[str, Any]:
    """Validated analyst answer: {reasoning, fields}."""
    data = extract_json(text)
    return {"reasoning": _reasoning(data), "fields": validate_fields(data.get("fields"), schema)}


def parse_writer(text: str, schema: KnowledgeSchema) -> dict[str, Any]:
    """Validated writer answer: {fields}."""
    data = extract_json(text)
    return {"fields": validate_fields(data.get("fields"), schema)}


class _Critique(BaseModel):
    model_config = ConfigDict(extra="ignore")

    reasoning: str = ""
    issues: list[str] = Field(default_factory=list)
    confidence: float = Field(ge=0.0, le=1.0)
    needs_revision: bool


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "answer"
    return f"'{loc}': {first['msg']}"


def parse_critic(text: str) -> dict[str, Any]:
    """Validated critic answer: {reasoning, issues, confidence, needs_revision}."""
    data = extract_json(text)
    try:
        critique = _Critique.model_validate(data)
    except ValidationError as exc:
        raise OutputError(_first_error(exc)) from None
    critique.issues = [c for c in (_clean(i) for i in critique.issues) if c]
    return critique.model_dump()


def parse_planner(text: str, category: str, min_dimensions: int, max_dimensions: int) -> dict[str, Any]:
    """Validated planner answer: {reasoning, dimensions}; dimension names must be snake_case and unique."""
    data = extract_json(text)
    dims = data.get("dimensions")
    if not isinstance(dims, list):
        raise OutputError("'dimensions' must be a list")
    if not min_dimensions <= len(dims) <= max_dimensions:
        raise OutputError(f"give between {min_dimensions} and {max_dimensions} dimensions, not {len(dims)}")
    for i, dim in enumerate(dims):
        name = dim.get("name") if isinstance(dim, dict) else None
        if not isinstance(name, str) or not _DIMENSION_NAME.match(name):
            raise OutputError(f"dimension {i}: 'name' must be snake_case (lowercase letters, digits, underscores), got {name!r}")
    try:
        schema = KnowledgeSchema(category=category, dimensions=[Dimension.model_validate(d) for d in dims])
    except ValidationError as exc:
        raise OutputError(_first_error(exc)) from None
    return {"reasoning": _reasoning(data), "dimensions": [d.model_dump() for d in schema.dimensions]}


def describe_schema(schema: KnowledgeSchema) -> str:
    """The schema as the bullet list shown to analysts, critic and writer."""
    return "\n".join(f"- {d.name} ({d.type}): {d.description}" for d in schema.dimensions)
