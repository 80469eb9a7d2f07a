"""A form from a question's JSON Schema: the fields the inbox page renders.

Covered: booleans (a checkbox), enums and ``const`` (a choice), strings with ``format`` (email,
uri, date, date-time, time), ``minLength``, ``maxLength`` and ``pattern``, numbers and integers
with their bounds, required fields, one level of nested objects (a fieldset), and arrays of enums
(a group of checkboxes with ``minItems``/``maxItems``). The browser checks what HTML can
(``required``, ``min``, ``maxlength``, ``pattern``, ...); anything else (``if``/``then``,
``not``, deeper nesting) is the server's to refuse, and the page shows its ``invalid_answer``.
A part of a schema the form cannot draw becomes a JSON text field, so every question can be
answered. A question with ``choices`` and no schema is one choice.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Field", "form_of"]

# JSON Schema string formats and the <input type> that checks them
_INPUT_TYPES = {"email": "email", "uri": "url", "url": "url", "date": "date", "time": "time"}
# longer strings get a text area
_LONG_TEXT = 200
_MAX_NESTING = 1  # objects inside the answer object; deeper ones are JSON text


@dataclass(frozen=True, slots=True)
class Field:
    """One control of the form.

    ``widget`` is one of ``checkbox``, ``choice``, ``multi``, ``text``, ``textarea``,
    ``number``, ``datetime``, ``group`` (a nested object: ``children``) or ``json``.
    ``path`` is where the value goes in the answer (``[]``: the answer itself); ``attrs`` are the
    HTML constraint attributes; ``options`` are ``(label, JSON text)`` pairs of a choice.
    """

    widget: str
    path: tuple[str, ...]
    label: str
    required: bool = False
    description: str | None = None
    value_type: str = "string"  # how the script turns the control's text into JSON
    attrs: Mapping[str, str] = field(default_factory=dict)
    options: tuple[tuple[str, str], ...] = ()
    children: tuple[Field, ...] = ()
    default: str | None = None

    @property
    def name(self) -> str:
        """The control's name and id stem: its path (``answer`` for the answer itself)."""
        return "answer." + ".".join(self.path) if self.path else "answer"

    @property
    def path_json(self) -> str:
        return json.dumps(list(self.path))


def form_of(prompt: Mapping[str, Any]) -> tuple[Field, ...]:
    """The fields that answer ``prompt`` (its ``schema`` and ``choices``)."""
    schema = prompt.get("schema")
    choices = prompt.get("choices")
    if choices is not None and not _is_object(schema):
        return (_choice((), "Answer", list(choices), required=True, schema=schema or {}),)
    if schema is None:
        return (Field("json", (), "Answer (JSON)", required=True, value_type="json"),)
    if _is_object(schema):
        return _properties(schema, (), depth=0)
    return (_field(schema, (), "Answer", required=True, depth=0),)


def _is_object(schema: Any) -> bool:
    return isinstance(schema, Mapping) and (
        schema.get("type") == "object" or ("properties" in schema and "type" not in schema)
    )


def _properties(schema: Mapping[str, Any], path: tuple[str, ...], depth: int) -> tuple[Field, ...]:
    required = set(schema.get("required") or ())
    properties: Mapping[str, Any] = schema.get("properties") or {}
    # required fields first; otherwise the stored order (Postgres jsonb orders keys by length)
    names = sorted(properties, key=lambda name: name not in required)
    return tuple(
        _field(
            properties[name],
            (*path, name),
            _title(name, properties[name]),
            required=name in required,
            depth=depth,
        )
        for name in names
    )


def _title(name: str, schema: Any) -> str:
    title = schema.get("title") if isinstance(schema, Mapping) else None
    return str(title) if title else name.replace("_", " ").capitalize()


def _field(schema: Any, path: tuple[str, ...], label: str, *, required: bool, depth: int) -> Field:
    if not isinstance(schema, Mapping):
        return Field("json", path, label, required=required, value_type="json")
    description = schema.get("description")
    default = json.dumps(schema["default"]) if "default" in schema else None
    common: dict[str, Any] = {"required": required, "description": description}
    kind = schema.get("type")
    if "enum" in schema or "const" in schema:
        values = list(schema["enum"]) if "enum" in schema else [schema["const"]]
        return _choice(path, label, values, required=required, schema=schema)
    if kind == "boolean":
        return Field("checkbox", path, label, value_type="boolean", default=default, **common)
    if kind in ("number", "integer"):
        return Field(
            "number",
            path,
            label,
            value_type=kind,
            attrs=_bounds(schema, kind),
            default=default,
            **common,
        )
    if kind == "string":
        return _string(schema, path, label, default, common)
    if kind == "array" and _enum_items(schema) is not None:
        items = _enum_items(schema) or []
        attrs = {
            k: str(schema[s]) for k, s in (("min", "minItems"), ("max", "maxItems")) if s in schema
        }
        return Field(
            "multi",
            path,
            label,
            value_type="array",
            attrs=attrs,
            options=tuple((_label(v), json.dumps(v)) for v in items),
            **common,
        )
    if _is_object(schema) and depth < _MAX_NESTING:
        children = _properties(schema, path, depth + 1)
        return Field("group", path, label, value_type="object", children=children, **common)
    return Field("json", path, f"{label} (JSON)", value_type="json", default=default, **common)


def _choice(
    path: tuple[str, ...], label: str, values: Sequence[Any], *, required: bool, schema: Any
) -> Field:
    description = schema.get("description") if isinstance(schema, Mapping) else None
    return Field(
        "choice",
        path,
        label,
        required=required,
        description=description,
        value_type="json",
        options=tuple((_label(v), json.dumps(v)) for v in values),
    )


def _label(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _enum_items(schema: Mapping[str, Any]) -> list[Any] | None:
    items = schema.get("items")
    if isinstance(items, Mapping) and "enum" in items:
        return list(items["enum"])
    return None


def _bounds(schema: Mapping[str, Any], kind: str) -> dict[str, str]:
    attrs = {"step": "1" if kind == "integer" else "any"}
    for html, key in (("min", "minimum"), ("max", "maximum")):
        if key in schema:
            attrs[html] = str(schema[key])
    # exclusive bounds: HTML has none; the script checks them (data-exclusive-*)
    for html, key in (
        ("data-exclusive-min", "exclusiveMinimum"),
        ("data-exclusive-max", "exclusiveMaximum"),
    ):
        if key in schema:
            attrs[html] = str(schema[key])
    if "multipleOf" in schema:
        attrs["step"] = str(schema["multipleOf"])
    return attrs


def _string(
    schema: Mapping[str, Any],
    path: tuple[str, ...],
    label: str,
    default: str | None,
    common: dict[str, Any],
) -> Field:
    attrs: dict[str, str] = {}
    for html, key in (("minlength", "minLength"), ("maxlength", "maxLength")):
        if key in schema:
            attrs[html] = str(schema[key])
    if "pattern" in schema:
        attrs["pattern"] = str(schema["pattern"])
    text_default = json.loads(default) if default is not None else None
    plain_default = text_default if isinstance(text_default, str) else None
    fmt = schema.get("format")
    if fmt == "date-time":
        return Field("datetime", path, label, attrs=attrs, default=plain_default, **common)
    if fmt in _INPUT_TYPES:
        attrs["type"] = _INPUT_TYPES[fmt]
    elif "pattern" not in schema and int(schema.get("maxLength", _LONG_TEXT + 1)) > _LONG_TEXT:
        return Field("textarea", path, label, attrs=attrs, default=plain_default, **common)
    attrs.setdefault("type", "text")
    return Field("text", path, label, attrs=attrs, default=plain_default, **common)
