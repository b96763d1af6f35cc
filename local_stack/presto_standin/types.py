"""DuckDB result types → Presto type names, type signatures and JSON value encoding.

Presto's client protocol describes each column with a type name (``bigint``, ``varchar``,
``decimal(15,2)``, ``array(bigint)`` ...) and a structured ``typeSignature``, and encodes values
in JSON the way its ``JsonRenderer`` does: integers and doubles as numbers (non-finite doubles as
the strings ``NaN``/``Infinity``/``-Infinity``), decimals as strings, dates as ``YYYY-MM-DD``,
timestamps as ``YYYY-MM-DD HH:MM:SS.fff``, varbinary as base64, arrays and rows as JSON arrays,
maps as JSON objects. A DuckDB type without a faithful Presto counterpart raises
``NOT_SUPPORTED`` instead of being guessed.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .errors import NOT_SUPPORTED, NUMERIC_VALUE_OUT_OF_RANGE, PrestoError

Encoder = Callable[[Any], Any] | None  # None: the Python value is already the JSON value

_BIGINT_MIN = -(2**63)
_BIGINT_MAX = 2**63 - 1
_UNBOUNDED_VARCHAR = 2147483647


@dataclass(frozen=True)
class PrestoType:
    """A Presto type as the protocol reports it, with the encoder for its values."""

    name: str
    signature: dict[str, Any]
    encoder: Encoder = None


def _signature(raw: str, arguments: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    arguments = arguments or []
    return {
        "rawType": raw,
        "arguments": arguments,
        "typeArguments": [a["value"] for a in arguments if a["kind"] == "TYPE_SIGNATURE"],
        "literalArguments": [],
    }


def _long(value: int) -> dict[str, Any]:
    return {"kind": "LONG_LITERAL", "value": value}


def _typed(sig: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "TYPE_SIGNATURE", "value": sig}


def simple_type(name: str) -> PrestoType:
    """Return a parameterless Presto type (``bigint``, ``date`` ...) with its encoder."""
    if name == "varchar":
        return PrestoType("varchar", _signature("varchar", [_long(_UNBOUNDED_VARCHAR)]))
    return PrestoType(name, _signature(name), _SIMPLE_ENCODERS.get(name))


def _encode_double(value: float | None) -> float | str | None:
    if value is None or math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _encode_bigint(value: int | None) -> int | None:
    if value is not None and not _BIGINT_MIN <= value <= _BIGINT_MAX:
        raise PrestoError(NUMERIC_VALUE_OUT_OF_RANGE, f"bigint overflow: {value}")
    return value


def _encode_decimal(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")


def _encode_date(value: dt.date | None) -> str | None:
    return None if value is None else value.isoformat()


def _encode_timestamp(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.strftime("%Y-%m-%d %H:%M:%S.") + f"{value.microsecond // 1000:03d}"


def _encode_timestamp_tz(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    value = value.astimezone(dt.UTC)
    return _encode_timestamp(value.replace(tzinfo=None)) + " UTC"


def _encode_time(value: dt.time | None) -> str | None:
    if value is None:
        return None
    return value.strftime("%H:%M:%S.") + f"{value.microsecond // 1000:03d}"


def _encode_interval(value: dt.timedelta | None) -> str | None:
    if value is None:
        return None
    sign = "-" if value < dt.timedelta(0) else ""
    value = abs(value)
    hours, rest = divmod(value.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    millis = value.microseconds // 1000
    return f"{sign}{value.days} {hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}"


def _encode_varbinary(value: bytes | None) -> str | None:
    return None if value is None else base64.b64encode(value).decode("ascii")


def _encode_str(value: Any) -> str | None:
    return None if value is None else str(value)


_SIMPLE_ENCODERS: dict[str, Encoder] = {
    "double": _encode_double,
    "real": _encode_double,
    "date": _encode_date,
    "timestamp": _encode_timestamp,
    "timestamp with time zone": _encode_timestamp_tz,
    "time": _encode_time,
    "interval day to second": _encode_interval,
    "varbinary": _encode_varbinary,
    "uuid": _encode_str,
}

# DuckDB type id → Presto type name, for types that map one to one.
_DUCKDB_SIMPLE = {
    "boolean": "boolean",
    "tinyint": "tinyint",
    "smallint": "smallint",
    "integer": "integer",
    "bigint": "bigint",
    "utinyint": "smallint",
    "usmallint": "integer",
    "uinteger": "bigint",
    "float": "real",
    "double": "double",
    "varchar": "varchar",
    "date": "date",
    "timestamp": "timestamp",
    "timestamp_s": "timestamp",
    "timestamp_ms": "timestamp",
    "timestamp_ns": "timestamp",
    "timestamp with time zone": "timestamp with time zone",
    "time": "time",
    "interval": "interval day to second",
    "blob": "varbinary",
    "uuid": "uuid",
}
# Presto has no 128-bit or unsigned 64-bit integer: DuckDB gives HUGEINT for sum(bigint), where
# Presto gives bigint and fails on overflow. Report bigint and fail the same way.
_DUCKDB_WIDE_INTEGERS = {"hugeint", "uhugeint", "ubigint"}


def presto_type(duckdb_type: Any) -> PrestoType:
    """Map a ``duckdb.DuckDBPyType`` of a result column to its Presto type."""
    type_id = duckdb_type.id
    if type_id in _DUCKDB_SIMPLE:
        return simple_type(_DUCKDB_SIMPLE[type_id])
    if type_id in _DUCKDB_WIDE_INTEGERS:
        return PrestoType("bigint", _signature("bigint"), _encode_bigint)
    if type_id == "decimal":
        params = dict(duckdb_type.children)
        precision, scale = int(params["precision"]), int(params["scale"])
        return PrestoType(
            f"decimal({precision},{scale})",
            _signature("decimal", [_long(precision), _long(scale)]),
            _encode_decimal,
        )
    if type_id == "enum":
        return simple_type("varchar")
    if type_id == "list":
        element = presto_type(dict(duckdb_type.children)["child"])
        return PrestoType(
            f"array({element.name})",
            _signature("array", [_typed(element.signature)]),
            _list_encoder(element.encoder),
        )
    if type_id == "map":
        children = dict(duckdb_type.children)
        key, value = presto_type(children["key"]), presto_type(children["value"])
        return PrestoType(
            f"map({key.name},{value.name})",
            _signature("map", [_typed(key.signature), _typed(value.signature)]),
            _map_encoder(key.encoder, value.encoder),
        )
    if type_id == "struct":
        fields = [(name, presto_type(child)) for name, child in duckdb_type.children]
        arguments = [
            {
                "kind": "NAMED_TYPE_SIGNATURE",
                "value": {
                    "fieldName": {"name": name, "delimited": False},
                    "typeSignature": field.signature,
                },
            }
            for name, field in fields
        ]
        return PrestoType(
            "row(" + ",".join(f"{name} {field.name}" for name, field in fields) + ")",
            _signature("row", arguments),
            _row_encoder([field.encoder for _, field in fields]),
        )
    raise PrestoError(
        NOT_SUPPORTED,
        f"The Presto stand-in cannot return DuckDB type {duckdb_type} (no Presto equivalent)",
    )


def _list_encoder(element: Encoder) -> Encoder:
    if element is None:
        return None

    def encode(value: list[Any] | None) -> list[Any] | None:
        return None if value is None else [element(v) for v in value]

    return encode


def _map_encoder(key: Encoder, value: Encoder) -> Encoder:
    def encode(mapping: dict[Any, Any] | None) -> dict[str, Any] | None:
        if mapping is None:
            return None
        return {str(key(k) if key else k): (value(v) if value else v) for k, v in mapping.items()}

    return encode


def _row_encoder(fields: list[Encoder]) -> Encoder:
    def encode(row: dict[str, Any] | None) -> list[Any] | None:
        if row is None:
            return None
        return [(f(v) if f else v) for f, v in zip(fields, row.values(), strict=True)]

    return encode


def encode_rows(rows: list[tuple[Any, ...]], encoders: list[Encoder]) -> list[list[Any]]:
    """Encode DuckDB result rows into Presto's JSON row representation."""
    active = [(i, e) for i, e in enumerate(encoders) if e is not None]
    if not active:
        return [list(r) for r in rows]
    out = []
    for row in rows:
        values = list(row)
        for i, encode in active:
            values[i] = encode(values[i])
        out.append(values)
    return out
