"""The JSONPath subset batch transform's ``DataProcessing`` filters accept.

What SageMaker documents ("Associate Prediction Results with Input Records"):

* ``$`` (the whole record), ``.name``, ``.*``, ``['a','b']`` (one or several children; several
  give an object with those keys), ``[1]``, ``[1,3,5]`` (negative indexes count from the end),
  ``[2:5]``, ``[:5]``, ``[2:]`` (slices).
* A CSV record is the JSON array of its fields, so only index-based paths apply to it.
* Slices include their end index: for CSV, ``$[1:4]`` is "the second through fifth columns"
  and ``$[:5]`` "the first through the sixth" (SageMaker's documented examples).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
_QUOTED = re.compile(r"\s*(?:'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\")\s*")
_INT = re.compile(r"\s*(-?\d+)\s*")


class JsonPathError(ValueError):
    """A filter that is not valid or does not fit a record."""


@dataclass(frozen=True)
class JsonPath:
    """A compiled filter expression."""

    text: str
    steps: tuple[tuple[Any, ...], ...]

    @property
    def is_identity(self) -> bool:
        return not self.steps

    def apply(self, value: Any) -> Any:
        """The part of ``value`` the expression selects."""
        for step in self.steps:
            value = _apply_step(step, value, self.text)
        return value

    def apply_row(self, row: list[Any]) -> list[Any]:
        """Apply to a CSV row (a JSON array); the result is again a row."""
        result = self.apply(row)
        if isinstance(result, dict):
            raise JsonPathError(f"{self.text} does not select columns of a CSV record")
        return result if isinstance(result, list) else [result]


def compile_path(text: str) -> JsonPath:
    """Parse ``text``; raises :class:`JsonPathError` for what SageMaker does not support."""
    if not isinstance(text, str) or not text.startswith("$"):
        raise JsonPathError(f"JSONPath {text!r} must start with '$'")
    steps: list[tuple[Any, ...]] = []
    pos = 1
    while pos < len(text):
        char = text[pos]
        if char == "." and text.startswith(".[", pos):
            pos += 1
            continue
        if char == ".":
            pos += 1
            if text.startswith("*", pos):
                steps.append(("wildcard",))
                pos += 1
                continue
            match = _NAME.match(text, pos)
            if not match:
                raise JsonPathError(f"JSONPath {text!r}: expected a name at position {pos}")
            steps.append(("key", match.group(0)))
            pos = match.end()
        elif char == "[":
            end = _closing_bracket(text, pos)
            steps.append(_parse_selector(text[pos + 1 : end], text))
            pos = end + 1
        else:
            raise JsonPathError(f"JSONPath {text!r}: unexpected {char!r} at position {pos}")
    return JsonPath(text, tuple(steps))


def _closing_bracket(text: str, start: int) -> int:
    quote = None
    for index in range(start + 1, len(text)):
        char = text[index]
        if quote:
            if char == "\\":
                continue
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "]":
            return index
    raise JsonPathError(f"JSONPath {text!r}: unclosed '['")


def _parse_selector(body: str, text: str) -> tuple[Any, ...]:
    stripped = body.strip()
    if stripped == "*":
        return ("wildcard",)
    if stripped.startswith(("'", '"')):
        names = []
        pos = 0
        while pos < len(body):
            match = _QUOTED.match(body, pos)
            if not match:
                raise JsonPathError(f"JSONPath {text!r}: bad name list [{body}]")
            names.append(match.group(1) if match.group(1) is not None else match.group(2))
            pos = match.end()
            if pos < len(body):
                if body[pos] != ",":
                    raise JsonPathError(f"JSONPath {text!r}: bad name list [{body}]")
                pos += 1
        return ("key", names[0]) if len(names) == 1 else ("keys", tuple(names))
    if ":" in stripped:
        parts = stripped.split(":")
        if len(parts) != 2:
            raise JsonPathError(f"JSONPath {text!r}: slice steps are not supported")
        bounds = []
        for part in parts:
            if part.strip() == "":
                bounds.append(None)
            elif _INT.fullmatch(part):
                bounds.append(int(part))
            else:
                raise JsonPathError(f"JSONPath {text!r}: bad slice [{body}]")
        return ("slice", bounds[0], bounds[1])
    indexes = []
    for part in stripped.split(","):
        if not _INT.fullmatch(part):
            raise JsonPathError(f"JSONPath {text!r}: bad index list [{body}]")
        indexes.append(int(part))
    return ("index", indexes[0]) if len(indexes) == 1 else ("indexes", tuple(indexes))


def _apply_step(step: tuple[Any, ...], value: Any, text: str) -> Any:
    kind = step[0]
    if kind == "key":
        if not isinstance(value, dict) or step[1] not in value:
            raise JsonPathError(f"{text}: the record has no attribute {step[1]!r}")
        return value[step[1]]
    if kind == "keys":
        if not isinstance(value, dict):
            raise JsonPathError(f"{text}: the record is not a JSON object")
        return {name: value[name] for name in step[1] if name in value}
    if kind == "wildcard":
        if isinstance(value, dict):
            return list(value.values())
        if isinstance(value, list):
            return list(value)
        raise JsonPathError(f"{text}: '*' needs an object or an array")
    if not isinstance(value, list):
        raise JsonPathError(f"{text}: the record is not an array")
    size = len(value)
    if kind == "index":
        return value[_checked(step[1], size, text)]
    if kind == "indexes":
        return [value[_checked(i, size, text)] for i in step[1]]
    # inclusive slice
    start, end = step[1], step[2]
    start = 0 if start is None else (start + size if start < 0 else start)
    end = size - 1 if end is None else (end + size if end < 0 else end)
    if start >= size or end >= size or start < 0 or end < 0:
        raise JsonPathError(
            f"{text}: indexes are outside of the {size} columns/elements of the record"
        )
    return value[start : end + 1]


def _checked(index: int, size: int, text: str) -> int:
    if not -size <= index < size:
        raise JsonPathError(f"{text}: index {index} is outside of the {size} elements")
    return index
