"""Presto error codes and the error payload of the client protocol.

Presto reports a failed query as a ``QueryResults`` document whose ``error`` member carries the
message, the numeric ``errorCode``, its ``errorName``, the ``errorType`` (``USER_ERROR``,
``INTERNAL_ERROR``, ``INSUFFICIENT_RESOURCES``, ``EXTERNAL``), an optional ``errorLocation`` and
a ``failureInfo`` (Java exception type, message, stack). Clients key off ``errorType`` and
``errorName``: ``prestodb`` raises ``PrestoUserError`` for ``USER_ERROR`` and
``PrestoQueryError`` / ``PrestoExternalError`` otherwise.

Analysis errors (missing table, schema, column, wrong operand types) are reported the way
prestodb does it: ``SYNTAX_ERROR`` with a ``line L:C:`` prefixed message such as
``line 3:6: Table tpch.tiny.nope does not exist``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ErrorCode:
    """One entry of Presto's ``StandardErrorCode``."""

    code: int
    name: str
    type: str


def _user(code: int, name: str) -> ErrorCode:
    return ErrorCode(code, name, "USER_ERROR")


GENERIC_USER_ERROR = _user(0, "GENERIC_USER_ERROR")
SYNTAX_ERROR = _user(1, "SYNTAX_ERROR")
ABANDONED_QUERY = _user(2, "ABANDONED_QUERY")
USER_CANCELED = _user(3, "USER_CANCELED")
PERMISSION_DENIED = _user(4, "PERMISSION_DENIED")
NOT_FOUND = _user(5, "NOT_FOUND")
FUNCTION_NOT_FOUND = _user(6, "FUNCTION_NOT_FOUND")
INVALID_FUNCTION_ARGUMENT = _user(7, "INVALID_FUNCTION_ARGUMENT")
DIVISION_BY_ZERO = _user(8, "DIVISION_BY_ZERO")
INVALID_CAST_ARGUMENT = _user(9, "INVALID_CAST_ARGUMENT")
NOT_SUPPORTED = _user(13, "NOT_SUPPORTED")
NUMERIC_VALUE_OUT_OF_RANGE = _user(19, "NUMERIC_VALUE_OUT_OF_RANGE")
SUBQUERY_MULTIPLE_ROWS = _user(28, "SUBQUERY_MULTIPLE_ROWS")
GENERIC_INTERNAL_ERROR = ErrorCode(65536, "GENERIC_INTERNAL_ERROR", "INTERNAL_ERROR")
GENERIC_INSUFFICIENT_RESOURCES = ErrorCode(
    131072, "GENERIC_INSUFFICIENT_RESOURCES", "INSUFFICIENT_RESOURCES"
)
EXCEEDED_TIME_LIMIT = ErrorCode(131075, "EXCEEDED_TIME_LIMIT", "INSUFFICIENT_RESOURCES")
# Connector errors are EXTERNAL; prestodb raises PrestoExternalError for them.
GENERIC_EXTERNAL_ERROR = ErrorCode(16777216, "GENERIC_EXTERNAL_ERROR", "EXTERNAL")

ERROR_CODES: dict[str, ErrorCode] = {
    c.name: c
    for c in (
        GENERIC_USER_ERROR,
        SYNTAX_ERROR,
        ABANDONED_QUERY,
        USER_CANCELED,
        PERMISSION_DENIED,
        NOT_FOUND,
        FUNCTION_NOT_FOUND,
        INVALID_FUNCTION_ARGUMENT,
        DIVISION_BY_ZERO,
        INVALID_CAST_ARGUMENT,
        NOT_SUPPORTED,
        NUMERIC_VALUE_OUT_OF_RANGE,
        SUBQUERY_MULTIPLE_ROWS,
        GENERIC_INTERNAL_ERROR,
        GENERIC_INSUFFICIENT_RESOURCES,
        EXCEEDED_TIME_LIMIT,
        GENERIC_EXTERNAL_ERROR,
    )
}

# Java exception types Presto names in failureInfo; informative only.
_FAILURE_TYPES = {
    "SYNTAX_ERROR": "com.facebook.presto.sql.analyzer.SemanticException",
    "USER_CANCELED": "com.facebook.presto.spi.PrestoException",
}


class PrestoError(Exception):
    """A query failure, rendered into Presto's ``error`` payload by :meth:`to_payload`."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        line: int | None = None,
        column: int | None = None,
        failure_type: str | None = None,
    ) -> None:
        if line is not None and column is not None:
            message = f"line {line}:{column}: {message}"
        super().__init__(message)
        self.code = code
        self.message = message
        self.line = line
        self.column = column
        self.failure_type = failure_type or _FAILURE_TYPES.get(
            code.name, "com.facebook.presto.spi.PrestoException"
        )

    def to_payload(self) -> dict[str, Any]:
        """Return the ``error`` member of a Presto ``QueryResults`` document."""
        location = (
            {"lineNumber": self.line, "columnNumber": self.column}
            if self.line is not None and self.column is not None
            else None
        )
        failure: dict[str, Any] = {
            "type": self.failure_type,
            "message": self.message,
            "suppressed": [],
            "stack": [],
        }
        payload: dict[str, Any] = {
            "message": self.message,
            "errorCode": self.code.code,
            "errorName": self.code.name,
            "errorType": self.code.type,
            "failureInfo": failure,
        }
        if location is not None:
            payload["errorLocation"] = location
            failure["errorLocation"] = location
        return payload


def location_of(sql: str, offset: int) -> tuple[int, int]:
    """Return Presto's 1-based ``(line, column)`` for a character offset into ``sql``."""
    offset = max(0, min(offset, len(sql)))
    line = sql.count("\n", 0, offset) + 1
    column = offset - (sql.rfind("\n", 0, offset) + 1) + 1
    return line, column
