"""Full request validation against botocore's ``sagemaker`` service model, worded like AWS.

One validator for the local runtime (``api.dispatch`` runs it on every request before any
handler looks anything up) and for the tests (``check`` on what the operators really sent).
botocore's own ``ParamValidator`` checks types, required members and minimums only; SageMaker's
service front end (AWS "Coral") also enforces every other trait of the model, so this walks the
input shape and checks, per member:

* ``required`` -> ``Member must not be null``;
* ``min``/``max`` on strings, blobs (bytes), lists and maps -> ``Member must have length
  greater/less than or equal to N``;
* ``min``/``max`` on integers, longs, floats, doubles -> ``Member must have value ...``;
* ``enum`` -> ``Member must satisfy enum value set: [A, B]``;
* ``pattern`` (a Java regular expression, matched against the whole value as Java's
  ``Matcher.matches()`` does) -> ``Member must satisfy regular expression pattern: <pattern>``.

Source of the rules: the traits of ``botocore/data/sagemaker/2017-07-24/service-2.json``
(botocore 1.43.117). Wording and member paths as SageMaker answers them, e.g. (issue
zenml-io/zenml#1502) ``2 validation errors detected: Value '...' at 'trainingJobName' failed to
satisfy constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62};
Value '...' at 'trainingJobName' failed to satisfy constraint: Member must have length less than
or equal to 63``. Paths are lower camel case; list elements are ``<list>.<1-based index>.member``
(``tags.6.member.value``, as AWS's Coral answers, e.g. SWO-GS/auto-tag#90); map entries and
scalar list elements are reported on the map/list itself with the element's constraints in
brackets (``Map value must satisfy constraint: [...]``, aws-samples/amazon-sagemaker-pytorch-
detectron2#10). A value of the wrong JSON type is not a validation error on AWS but a
``SerializationException`` of the JSON deserializer; so are members the model does not know
(boto3 refuses to send either, so only raw requests can carry them).

Java vs Python regular expressions: the ``regex`` module is used (it knows Java's Unicode
classes ``\\p{L}``, ``\\p{Z}``, ``\\p{N}``, ``\\p{M}``, ``\\p{S}``, ``\\p{P}`` and look-behind, which
``re`` cannot take). ``_java_to_python`` translates what even ``regex`` reads differently:
surrogate-pair escapes (``\\uD800\\uDC00-\\uDBFF\\uDFFF`` is one range of supplementary code points
in Java), ``\\p{Alnum}`` (ASCII-only in Java by default) and a quantified end anchor
(``$ {1,128}`` as the model writes it, which Java accepts and treats as ``$``).
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import regex

SERVICE = "sagemaker"


@dataclass(frozen=True)
class Violation:
    """One broken constraint: where, which value, and AWS's wording of the constraint."""

    path: str
    value: Any
    constraint: str

    def message(self) -> str:
        """``Value '<v>' at '<path>' failed to satisfy constraint: <constraint>``."""
        shown = "null" if self.value is None else f"'{_java_text(self.value)}'"
        return f"Value {shown} at '{self.path}' failed to satisfy constraint: {self.constraint}"


class RequestRejected(Exception):
    """A request SageMaker would refuse before doing anything: ``code`` is the AWS error code
    (``ValidationException`` or ``SerializationException``), ``message`` its AWS wording."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def report(violations: list[Violation]) -> str:
    """AWS's message for ``violations``: ``N validation error(s) detected: a; b``."""
    noun = "error" if len(violations) == 1 else "errors"
    details = "; ".join(v.message() for v in violations)
    return f"{len(violations)} validation {noun} detected: {details}"


def violations(operation: str, request: dict[str, Any]) -> list[Violation]:
    """Every constraint of ``operation``'s input shape that ``request`` breaks, in member order.

    Raises ``RequestRejected`` (``SerializationException``) for a value of the wrong type or an
    unknown member, which SageMaker's JSON deserializer refuses before validating."""
    shape = _model().operation_model(operation).input_shape
    if shape is None:
        return []
    return list(_walk_structure(shape, request, ""))


def check(operation: str, request: dict[str, Any]) -> None:
    """Raise ``RequestRejected`` unless ``request`` satisfies every rule of ``operation``."""
    found = violations(operation, request)
    if found:
        raise RequestRejected("ValidationException", report(found))


def member_path(parent: str, name: str) -> str:
    """AWS's path of member ``name`` under ``parent``: lower camel case, dot separated."""
    member = name[:1].lower() + name[1:]
    return f"{parent}.{member}" if parent else member


@functools.cache
def _model() -> Any:
    import botocore.session

    return botocore.session.get_session().get_service_model(SERVICE)


# --- walking the shapes ------------------------------------------------------------------------
def _walk(shape: Any, value: Any, path: str) -> Iterator[Violation]:
    kind = shape.type_name
    if kind == "structure":
        yield from _walk_structure(shape, value, path)
    elif kind == "list":
        yield from _walk_list(shape, value, path)
    elif kind == "map":
        yield from _walk_map(shape, value, path)
    else:
        _check_type(shape, value, path)
        yield from (Violation(path, value, c) for c in _scalar_failures(shape, value))


def _walk_structure(shape: Any, value: Any, path: str) -> Iterator[Violation]:
    if not isinstance(value, dict):
        raise _type_error(path or "request", "structure", value)
    for name in value:
        if name not in shape.members:
            raise RequestRejected(
                "SerializationException", f"Unknown member {name} at '{path or 'request'}'"
            )
    for name, member in shape.members.items():
        child = member_path(path, name)
        if value.get(name) is None:
            if name in shape.required_members:
                yield Violation(child, None, "Member must not be null")
            continue
        yield from _walk(member, value[name], child)


def _walk_list(shape: Any, value: Any, path: str) -> Iterator[Violation]:
    if not isinstance(value, list | tuple):
        raise _type_error(path, "list", value)
    yield from (Violation(path, value, c) for c in _length_failures(shape, len(value)))
    element = shape.member
    if element.type_name in ("structure", "list", "map"):
        for index, item in enumerate(value, start=1):
            yield from _walk(element, item, f"{path}.{index}.member")
        return
    for item in value:
        _check_type(element, item, path)
    if any(_scalar_failures(element, item) for item in value):
        rules = ", ".join(_all_constraints(element))
        yield Violation(path, value, f"Member must satisfy constraint: [{rules}]")


def _walk_map(shape: Any, value: Any, path: str) -> Iterator[Violation]:
    if not isinstance(value, dict):
        raise _type_error(path, "map", value)
    yield from (Violation(path, value, c) for c in _length_failures(shape, len(value)))
    for key in value:
        _check_type(shape.key, key, path)
    if any(_scalar_failures(shape.key, key) for key in value):
        rules = ", ".join(_all_constraints(shape.key))
        yield Violation(path, value, f"Map keys must satisfy constraint: [{rules}]")
    if shape.value.type_name in ("structure", "list", "map"):
        for key, item in value.items():
            yield from _walk(shape.value, item, f"{path}.{key}")
        return
    for item in value.values():
        _check_type(shape.value, item, path)
    if any(_scalar_failures(shape.value, item) for item in value.values()):
        rules = ", ".join(_all_constraints(shape.value))
        yield Violation(path, value, f"Map value must satisfy constraint: [{rules}]")


# --- scalar rules ------------------------------------------------------------------------------
def _scalar_failures(shape: Any, value: Any) -> list[str]:
    """The constraints of a scalar shape that ``value`` breaks (pattern, length, enum, range)."""
    meta, failures = shape.metadata, []
    if shape.type_name == "string":
        pattern = meta.get("pattern")
        if pattern is not None and not java_pattern(pattern).fullmatch(value):
            failures.append(f"Member must satisfy regular expression pattern: {pattern}")
        failures += _length_failures(shape, len(value))
        enum = meta.get("enum")
        if enum and value not in enum:
            failures.append(f"Member must satisfy enum value set: [{', '.join(enum)}]")
    elif shape.type_name == "blob":
        failures += _length_failures(shape, len(_blob_bytes(value)))
    elif shape.type_name in ("integer", "long", "float", "double"):
        if "max" in meta and value > meta["max"]:
            failures.append(f"Member must have value less than or equal to {_number(meta['max'])}")
        if "min" in meta and value < meta["min"]:
            failures.append(
                f"Member must have value greater than or equal to {_number(meta['min'])}"
            )
    return failures


def _length_failures(shape: Any, length: int) -> list[str]:
    meta, failures = shape.metadata, []
    if "max" in meta and length > meta["max"]:
        failures.append(f"Member must have length less than or equal to {meta['max']}")
    if "min" in meta and length < meta["min"]:
        failures.append(f"Member must have length greater than or equal to {meta['min']}")
    return failures


def _all_constraints(shape: Any) -> list[str]:
    """Every constraint of an element shape, listed as AWS lists them for maps and lists."""
    meta, rules = shape.metadata, []
    noun = "value" if shape.type_name in ("integer", "long", "float", "double") else "length"
    if "max" in meta:
        rules.append(f"Member must have {noun} less than or equal to {_number(meta['max'])}")
    if "min" in meta:
        rules.append(f"Member must have {noun} greater than or equal to {_number(meta['min'])}")
    if "pattern" in meta:
        rules.append(f"Member must satisfy regular expression pattern: {meta['pattern']}")
    if meta.get("enum"):
        rules.append(f"Member must satisfy enum value set: [{', '.join(meta['enum'])}]")
    return rules


_PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "boolean": (bool,),
    "integer": (int,),
    "long": (int,),
    "float": (int, float),
    "double": (int, float),
    "blob": (str, bytes, bytearray),
    "timestamp": (int, float, str, datetime),
}


def _check_type(shape: Any, value: Any, path: str) -> None:
    expected = _PYTHON_TYPES.get(shape.type_name)
    wrong_bool = isinstance(value, bool) and shape.type_name != "boolean"
    if expected is not None and (wrong_bool or not isinstance(value, expected)):
        raise _type_error(path, shape.type_name, value)


def _type_error(path: str, expected: str, value: Any) -> RequestRejected:
    return RequestRejected(
        "SerializationException",
        f"Expected {expected} at '{path}', got {type(value).__name__} {value!r:.80}",
    )


def _blob_bytes(value: Any) -> bytes:
    # The JSON protocol carries blobs base64-encoded; in-process callers may pass bytes.
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    try:
        return base64.b64decode(value, validate=True)
    except ValueError as err:
        raise RequestRejected("SerializationException", f"Invalid base64 blob: {err}") from err


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _java_text(value: Any) -> str:
    """How AWS (Java) prints a value in a message: ``[a, b]``, ``{k=v}``, ``true``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_java_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_java_text(v)}" for k, v in value.items()) + "}"
    return str(value)


# --- Java patterns -----------------------------------------------------------------------------
@functools.cache
def java_pattern(pattern: str) -> regex.Pattern[str]:
    """The model's Java ``pattern`` compiled for Python (translated by ``_java_to_python``)."""
    return regex.compile(_java_to_python(pattern))


_SURROGATE_RANGE = regex.compile(
    r"\\u(D[89AB][0-9A-F]{2})\\u(D[C-F][0-9A-F]{2})-\\u(D[89AB][0-9A-F]{2})\\u(D[C-F][0-9A-F]{2})",
    regex.IGNORECASE,
)


def _supplementary(high: str, low: str) -> str:
    point = 0x10000 + ((int(high, 16) - 0xD800) << 10) + (int(low, 16) - 0xDC00)
    return f"\\U{point:08X}"


def _java_to_python(pattern: str) -> str:
    """Translate the Java-only constructs of the model's patterns (see the module docstring)."""
    out = _SURROGATE_RANGE.sub(
        lambda m: f"{_supplementary(m[1], m[2])}-{_supplementary(m[3], m[4])}", pattern
    )
    out = regex.sub(r"\$\{\d+(,\d*)?\}", "$", out)
    return _replace_alnum(out)


def _replace_alnum(pattern: str) -> str:
    """``\\p{Alnum}`` is ``[a-zA-Z0-9]`` in Java (ASCII unless UNICODE_CHARACTER_CLASS)."""
    out, depth, i = [], 0, 0
    while i < len(pattern):
        if pattern.startswith(r"\p{Alnum}", i):
            out.append("a-zA-Z0-9" if depth else "[a-zA-Z0-9]")
            i += len(r"\p{Alnum}")
            continue
        char = pattern[i]
        if char == "\\":
            out.append(pattern[i : i + 2])
            i += 2
            continue
        depth += 1 if char == "[" else -1 if char == "]" and depth else 0
        out.append(char)
        i += 1
    return "".join(out)
