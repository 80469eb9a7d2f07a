"""Questions a job asks a person: building the stored prompt and checking answers against it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jsonschema

from jobkeeper.domain.validate import encode_json, storable
from jobkeeper.errors import InvalidRequest

__all__ = ["ON_TIMEOUT", "answer_problems", "build_prompt", "same_json"]

ON_TIMEOUT = ("fail", "cancel", "default")


def build_prompt(
    *,
    key: str,
    text: object,
    schema: object,
    choices: object,
    timeout: object,
    on_timeout: object,
    default: Any,
) -> dict[str, Any]:
    """Validate a question's parts and return the prompt stored with a waiting job."""
    if not isinstance(text, str) or not text.strip() or len(text) > 10_000:
        raise InvalidRequest("prompt", "a question of 1 to 10,000 characters is required")
    storable("prompt", text)
    if schema is not None:
        if not isinstance(schema, dict):
            raise InvalidRequest("schema", "a JSON Schema object is required")
        plain: dict[str, Any] = _thaw(schema)  # from a frozen payload: tuples are arrays here
        schema = plain
        try:
            jsonschema.Draft202012Validator.check_schema(plain)
        except jsonschema.SchemaError as exc:
            raise InvalidRequest("schema", f"not a valid JSON Schema: {exc.message}") from None
    if choices is not None and (not isinstance(choices, list | tuple) or not choices):
        raise InvalidRequest("choices", "a non-empty list of allowed answers is required")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0
    ):
        raise InvalidRequest("timeout", "a positive number of seconds is required")
    if on_timeout not in ON_TIMEOUT:
        raise InvalidRequest("on_timeout", f"one of {list(ON_TIMEOUT)}")
    prompt = {
        "key": key,
        "text": text,
        "schema": schema,
        "choices": None if choices is None else list(choices),
        "timeout": timeout,
        "on_timeout": on_timeout,
        "default": default,
    }
    if on_timeout == "default":
        problems = answer_problems(prompt, default)
        if problems:
            raise InvalidRequest("default", "; ".join(problems))
    encode_json("prompt", prompt)
    return prompt


def answer_problems(prompt: Mapping[str, Any], answer: Any) -> list[str]:
    """Why ``answer`` does not fit the question (empty: it fits)."""
    choices = prompt.get("choices")
    if choices is not None and not any(same_json(answer, choice) for choice in choices):
        return [f"{answer!r} is not one of the choices {_thaw(choices)}"]
    schema = prompt.get("schema")
    if schema is None:
        return []
    validator = jsonschema.Draft202012Validator(_thaw(schema))
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '(answer)'}: {error.message}"
        for error in validator.iter_errors(_thaw(answer))
    ]


def same_json(a: Any, b: Any) -> bool:
    """JSON equality: arrays whether list or tuple, numbers by value (Postgres may rewrite
    ``1e16`` as ``10000000000000000``), but ``true`` is never ``1``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _thaw(value: Any) -> Any:
    """Plain dicts and lists again (jsonschema type checks want list, not tuple)."""
    if isinstance(value, dict):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_thaw(v) for v in value]
    return value
