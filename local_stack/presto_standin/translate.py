"""Presto SQL → DuckDB SQL, with Presto's name resolution and Presto-style errors.

A statement goes through these steps:

1. Utility statements (``SHOW CATALOGS|SCHEMAS|TABLES|COLUMNS``, ``DESCRIBE``, ``PREPARE``,
   ``EXECUTE ... USING``, ``DEALLOCATE PREPARE``) are answered here without DuckDB.
0. Every statement is first checked against Presto's grammar (``grammar.py``): what it does
   not parse is ``SYNTAX_ERROR`` with Presto's message, line and column.
2. Queries are parsed with sqlglot's Presto dialect; what sqlglot cannot parse although the
   grammar accepted it is ``NOT_SUPPORTED`` (a limit of the stand-in).
3. Only read queries are accepted (``CREATE``/``DROP`` go to the Hive catalog, ``hive.py``,
   which translates a ``CREATE TABLE ... AS`` query the same way); every table reference is
   resolved against the session's
   catalog and schema (``X-Presto-Catalog`` / ``X-Presto-Schema``) into ``tpch.<schema>.<table>``
   and checked, giving Presto's messages (``Table tpch.tiny.x does not exist``).
4. Checks that keep the stand-in from accepting what Presto rejects or from returning different
   data: functions sqlglot does not know are refused (``NOT_SUPPORTED``) rather than passed to a
   DuckDB function of the same name; comparing a TPC-H column with a literal of another type
   (``orderdate >= '1996-01-01'``) fails as in Presto; divisors are wrapped so that division by
   zero fails as in Presto instead of giving NULL as in DuckDB; day-or-coarser arithmetic and
   truncation of a known DATE stays a DATE (DuckDB would make it a TIMESTAMP); unnamed output
   columns are named ``_col0``, ``_col1`` ... as Presto names them.
5. With a "visible up to" date D (``visibility.py``), ``orders`` and ``lineitem`` are read
   through a filter hiding the orders dated after D and their line items (data not landed yet).
6. sqlglot writes DuckDB SQL with ``unsupported_level=RAISE``: anything it cannot translate is a
   ``NOT_SUPPORTED`` error naming the problem.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import ErrorLevel, ParseError, TokenError, UnsupportedError
from sqlglot.tokens import Token, TokenType

from . import catalog as tpch
from .errors import NOT_SUPPORTED, SYNTAX_ERROR, PrestoError, location_of
from .grammar import check_statement
from .hive import DDL_WORDS, ActionPlan, HiveCatalog

# Functions sqlglot does not model but that exist with the same semantics in DuckDB. Anything
# else sqlglot leaves as an anonymous function is refused instead of guessed.
SAME_IN_DUCKDB: frozenset[str] = frozenset()


_LEADING_COMMENTS = re.compile(r"\A(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/)*", re.DOTALL)
_NAME = r'(?:"[^"]+"|[A-Za-z_][\w$]*)'
_QUALIFIED = rf"{_NAME}(?:\s*\.\s*{_NAME})*"
_LIKE = r"(?:\s+LIKE\s+'(?P<like>(?:[^']|'')*)')?"
_SHOW_CATALOGS = re.compile(rf"SHOW\s+CATALOGS{_LIKE}\s*", re.I)
_SHOW_SCHEMAS = re.compile(
    rf"SHOW\s+SCHEMAS(?:\s+(?:FROM|IN)\s+(?P<name>{_NAME}))?{_LIKE}\s*", re.I
)
_SHOW_TABLES = re.compile(
    rf"SHOW\s+TABLES(?:\s+(?:FROM|IN)\s+(?P<name>{_QUALIFIED}))?{_LIKE}\s*", re.I
)
_DESCRIBE = re.compile(
    rf"(?:DESCRIBE|DESC|SHOW\s+COLUMNS\s+(?:FROM|IN))\s+(?P<name>{_QUALIFIED})\s*", re.I
)
_PREPARE = re.compile(rf"PREPARE\s+(?P<name>{_NAME})\s+FROM\s+(?P<statement>.+)", re.I | re.DOTALL)
_EXECUTE = re.compile(
    rf"EXECUTE\s+(?P<name>{_NAME})(?:\s+USING\s+(?P<params>.+))?", re.I | re.DOTALL
)
_DEALLOCATE = re.compile(rf"DEALLOCATE\s+PREPARE\s+(?P<name>{_NAME})\s*", re.I)
_UTILITY_WORDS = re.compile(
    r"(SHOW|DESCRIBE|DESC|PREPARE|EXECUTE|DEALLOCATE|USE|EXPLAIN|SET|RESET|START|COMMIT|"
    r"ROLLBACK|CALL|GRANT|REVOKE|ANALYZE)\b",
    re.I,
)

_TOKEN_REPR = re.compile(r"<Token token_type: TokenType\.(\w+), text: (.*?), line: \d+.*?>")
_QUERY_ROOTS = (exp.Select, exp.SetOperation, exp.Subquery, exp.Values)
_COMPARISONS: dict[type[exp.Expression], str] = {
    exp.EQ: "=",
    exp.NEQ: "<>",
    exp.GT: ">",
    exp.GTE: ">=",
    exp.LT: "<",
    exp.LTE: "<=",
}
_NUMERIC = {"bigint", "integer", "double"}


@dataclass
class Session:
    """What the client's headers say about the session."""

    user: str
    catalog: str | None = None
    schema: str | None = None
    prepared: dict[str, str] = field(default_factory=dict)


@dataclass
class DuckDBPlan:
    """A query DuckDB runs; ``schemas`` must exist (be generated) before it runs."""

    sql: str
    schemas: set[str]


@dataclass
class StaticPlan:
    """A result computed without DuckDB (SHOW ..., PREPARE ...)."""

    columns: list[tuple[str, str]]
    rows: list[list[Any]]
    headers: dict[str, str] = field(default_factory=dict)
    update_type: str | None = None


Plan = DuckDBPlan | StaticPlan | ActionPlan


class Translator:
    """Turns Presto statements into plans for the configured ``tpch`` schemas.

    ``visible_up_to`` returns the "visible up to" date for each query (``None``: all data);
    ``hive`` is the Hive catalog that ``CREATE``/``DROP`` statements go to (``hive.py``).
    """

    def __init__(
        self,
        schemas: tuple[str, ...],
        visible_up_to: Callable[[], date | None] | None = None,
        hive: HiveCatalog | None = None,
    ) -> None:
        self.schemas = schemas
        self.visible_up_to = visible_up_to
        self.hive = hive

    # -- entry point -------------------------------------------------------------------------

    def plan(self, sql: str, session: Session) -> Plan:
        """Return the plan for one Presto statement, or raise :class:`PrestoError`."""
        check_statement(sql)  # Presto's grammar first: sqlglot accepts what Presto rejects
        head = _LEADING_COMMENTS.match(sql)
        body = sql[head.end() if head else 0 :]
        if _UTILITY_WORDS.match(body):
            return self._utility(body, session)
        if DDL_WORDS.match(body):
            return self._ddl(body, session)
        return DuckDBPlan(*self._translate_query(sql, session))

    def _ddl(self, body: str, session: Session) -> ActionPlan:
        if self.hive is None:
            raise PrestoError(
                NOT_SUPPORTED,
                "The Presto stand-in has no Hive catalog (start it with --hive-catalog) and the "
                "tpch connector is read-only",
            )
        return self.hive.plan(
            body,
            (session.catalog, session.schema),
            lambda query: self._translate_query(query, session),
        )

    # -- utility statements ------------------------------------------------------------------

    def _utility(self, body: str, session: Session) -> Plan:
        text = body.rstrip()
        if m := _SHOW_CATALOGS.fullmatch(text):
            return StaticPlan([("Catalog", "varchar")], _like([tpch.CATALOG], m["like"]))
        if m := _SHOW_SCHEMAS.fullmatch(text):
            catalog = _unquote(m["name"]) if m["name"] else session.catalog
            if catalog is None:
                raise PrestoError(
                    SYNTAX_ERROR, "Catalog must be specified when session catalog is not set"
                )
            self._check(catalog, None)
            return StaticPlan([("Schema", "varchar")], _like(sorted(self.schemas), m["like"]))
        if m := _SHOW_TABLES.fullmatch(text):
            parts = _split_name(m["name"]) if m["name"] else []
            catalog, schema = self._schema_of(parts, session)
            self._check(catalog, schema)
            return StaticPlan([("Table", "varchar")], _like(sorted(tpch.TPCH_TABLES), m["like"]))
        if m := _DESCRIBE.fullmatch(text):
            catalog, schema, table = self._resolve(_split_name(m["name"]), session)
            self._check(catalog, schema, table)
            rows = [[name, presto, "", ""] for name, presto, _ in tpch.TPCH_TABLES[table]]
            return StaticPlan(
                [
                    ("Column", "varchar"),
                    ("Type", "varchar"),
                    ("Extra", "varchar"),
                    ("Comment", "varchar"),
                ],
                rows,
            )
        if m := _PREPARE.fullmatch(text):
            statement = m["statement"]
            self._parse(statement)  # Presto rejects a statement that does not parse at PREPARE
            name = _unquote(m["name"])
            return StaticPlan(
                [],
                [],
                headers={"X-Presto-Added-Prepare": f"{name}={urllib.parse.quote_plus(statement)}"},
                update_type="PREPARE",
            )
        if m := _EXECUTE.fullmatch(text):
            name = _unquote(m["name"])
            if name not in session.prepared:
                raise PrestoError(SYNTAX_ERROR, f"Prepared statement not found: {name}")
            statement = _bind_parameters(session.prepared[name], m["params"] or "")
            return self.plan(statement, session)
        if m := _DEALLOCATE.fullmatch(text):
            name = _unquote(m["name"])
            return StaticPlan(
                [], [], headers={"X-Presto-Deallocated-Prepare": name}, update_type="DEALLOCATE"
            )
        keyword = text.split(None, 2)[:2]
        raise PrestoError(
            NOT_SUPPORTED,
            f"The Presto stand-in does not support the statement {' '.join(keyword).upper()!r} "
            "(it answers queries, SHOW CATALOGS/SCHEMAS/TABLES/COLUMNS, DESCRIBE and "
            "PREPARE/EXECUTE/DEALLOCATE PREPARE)",
        )

    # -- queries -----------------------------------------------------------------------------

    def _parse(self, sql: str) -> exp.Expression:
        # Only statements Presto's grammar accepted get here: if sqlglot cannot parse one, that
        # is the stand-in's limit, not the user's error.
        try:
            return sqlglot.parse_one(sql, read="presto")
        except (TokenError, ParseError) as err:
            detail = _TOKEN_REPR.sub(_token_text, str(err)).split("\n")[0]
            raise PrestoError(
                NOT_SUPPORTED,
                f"The Presto stand-in cannot parse this statement (sqlglot: {detail})",
            ) from None

    def _translate_query(self, sql: str, session: Session) -> tuple[str, set[str]]:
        tree = self._parse(sql)
        if isinstance(tree, exp.Command) or not isinstance(tree, _QUERY_ROOTS):
            kind = tree.key.upper() if not isinstance(tree, exp.Command) else str(tree.this).upper()
            raise PrestoError(
                NOT_SUPPORTED,
                f"The Presto stand-in only runs queries; {kind} is not supported "
                "(the tpch connector is read-only)",
            )
        schemas = self._resolve_tables(tree, sql, session)
        _refuse_unknown_functions(tree, sql)
        _check_literal_comparisons(tree, sql)
        _guard_divisions(tree)
        _keep_date_arithmetic_dates(tree)
        _name_outputs(tree)
        # Last, so that the checks above and their error locations see the query as written.
        day = self.visible_up_to() if self.visible_up_to is not None else None
        if day is not None:
            _hide_unlanded(tree, day)
        try:
            duck = tree.sql(dialect="duckdb", unsupported_level=ErrorLevel.RAISE)
        except UnsupportedError as err:
            raise PrestoError(
                NOT_SUPPORTED, f"The Presto stand-in cannot translate this query to DuckDB: {err}"
            ) from None
        return duck, schemas

    def _resolve_tables(self, tree: exp.Expression, sql: str, session: Session) -> set[str]:
        ctes = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
        used: set[str] = set()
        for table in list(tree.find_all(exp.Table)):
            if not isinstance(table.this, exp.Identifier):
                raise _located(
                    NOT_SUPPORTED,
                    f"The Presto stand-in does not support table functions ({table.this.sql('presto')})",
                    sql,
                    table,
                )
            parts = [p.name.lower() for p in table.parts]
            if len(parts) == 1 and parts[0] in ctes:
                continue
            try:
                catalog, schema, name = self._resolve(parts, session)
                self._check(catalog, schema, name)
            except PrestoError as err:
                raise _located(err.code, err.message, sql, table) from None
            used.add(schema)
            table.set("catalog", exp.to_identifier(catalog))
            table.set("db", exp.to_identifier(schema))
            table.set("this", exp.to_identifier(name))
        return used

    # -- names -------------------------------------------------------------------------------

    def _schema_of(self, parts: list[str], session: Session) -> tuple[str, str]:
        if len(parts) == 2:
            return parts[0], parts[1]
        if len(parts) == 1:
            if session.catalog is None:
                raise PrestoError(
                    SYNTAX_ERROR, "Catalog must be specified when session catalog is not set"
                )
            return session.catalog, parts[0]
        if not parts:
            if session.catalog is None or session.schema is None:
                raise PrestoError(
                    SYNTAX_ERROR, "Schema must be specified when session schema is not set"
                )
            return session.catalog, session.schema
        raise PrestoError(SYNTAX_ERROR, f"Too many parts in schema name: {'.'.join(parts)}")

    def _resolve(self, parts: list[str], session: Session) -> tuple[str, str, str]:
        if len(parts) == 3:
            return parts[0], parts[1], parts[2]
        if len(parts) > 3 or not parts:
            raise PrestoError(SYNTAX_ERROR, f"Too many dots in table name: {'.'.join(parts)}")
        if session.catalog is None:
            raise PrestoError(
                SYNTAX_ERROR, "Catalog must be specified when session catalog is not set"
            )
        if len(parts) == 2:
            return session.catalog, parts[0], parts[1]
        if session.schema is None:
            raise PrestoError(
                SYNTAX_ERROR, "Schema must be specified when session schema is not set"
            )
        return session.catalog, session.schema, parts[0]

    def _check(self, catalog: str, schema: str | None, table: str | None = None) -> None:
        if self.hive is not None and catalog == self.hive.name:
            raise PrestoError(
                NOT_SUPPORTED,
                f"The Presto stand-in writes the {catalog} catalog but cannot read it",
            )
        if catalog != tpch.CATALOG:
            if catalog == "system":
                raise PrestoError(NOT_SUPPORTED, "The Presto stand-in has no 'system' catalog")
            raise PrestoError(SYNTAX_ERROR, f"Catalog {catalog} does not exist")
        if schema is None:
            return
        if schema == "information_schema":
            raise PrestoError(
                NOT_SUPPORTED, "The Presto stand-in does not provide information_schema"
            )
        if schema not in self.schemas:
            raise PrestoError(SYNTAX_ERROR, f"Schema {schema} does not exist")
        if table is not None and table not in tpch.TPCH_TABLES:
            raise PrestoError(SYNTAX_ERROR, f"Table {catalog}.{schema}.{table} does not exist")


# -- helpers -----------------------------------------------------------------------------------


def _token_text(match: re.Match[str]) -> str:
    return "<EOF>" if match[1] == "SENTINEL" else f"'{match[2]}'"


def _unquote(name: str) -> str:
    name = name.strip()
    if name.startswith('"') and name.endswith('"'):
        return name[1:-1].replace('""', '"').lower()
    return name.lower()


def _split_name(text: str) -> list[str]:
    return [_unquote(p) for p in re.findall(_NAME, text)]


def _like(values: list[str], pattern: str | None) -> list[list[Any]]:
    if pattern is None:
        return [[v] for v in values]
    regex = "".join(
        ".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern.replace("''", "'")
    )
    return [[v] for v in values if re.fullmatch(regex, v)]


def _located(code: Any, message: str, sql: str, node: exp.Expression) -> PrestoError:
    start = _start_of(node)
    if start is None:
        return PrestoError(code, message)
    line, column = location_of(sql, start)
    return PrestoError(code, message, line=line, column=column)


def _start_of(node: exp.Expression) -> int | None:
    starts = [n.meta["start"] for n in node.walk() if "start" in (n.meta or {})]
    return min(starts) if starts else None


def _refuse_unknown_functions(tree: exp.Expression, sql: str) -> None:
    for node in tree.find_all(exp.Anonymous, exp.AnonymousAggFunc):
        name = str(node.this).lower()
        if name not in SAME_IN_DUCKDB:
            raise _located(
                NOT_SUPPORTED,
                f"The Presto stand-in cannot run function {name}(): sqlglot has no DuckDB "
                "translation for it (keep use-case SQL to portable Presto SQL)",
                sql,
                node,
            )


def _literal_type(node: exp.Expression) -> str | None:
    if isinstance(node, exp.Literal):
        if node.is_string:
            return f"varchar({len(node.this)})"
        return "integer" if node.is_int else "decimal"
    return None


def _column_type(node: exp.Expression) -> str | None:
    if isinstance(node, exp.Column) and not isinstance(node.this, exp.Star):
        return tpch.COLUMN_TYPES.get(node.name.lower())
    return None


def _incompatible(column_type: str, literal_type: str) -> bool:
    literal_is_string = literal_type.startswith("varchar")
    if column_type == "date" or column_type in _NUMERIC:
        return literal_is_string
    if column_type.startswith("varchar"):
        return not literal_is_string
    return False


def _check_literal_comparisons(tree: exp.Expression, sql: str) -> None:
    """Fail like Presto on ``date_column >= '1996-01-01'`` (DuckDB would cast silently)."""
    for node in tree.find_all(*_COMPARISONS):
        left, right = node.left, node.right
        for col, lit, pair in ((left, right, (left, right)), (right, left, (left, right))):
            column_type, literal_type = _column_type(col), _literal_type(lit)
            if column_type and literal_type and _incompatible(column_type, literal_type):
                types = [_column_type(p) or _literal_type(p) for p in pair]
                raise _located(
                    SYNTAX_ERROR,
                    f"'{_COMPARISONS[type(node)]}' cannot be applied to {types[0]}, {types[1]}",
                    sql,
                    node,
                )
    for node in tree.find_all(exp.Between):
        column_type = _column_type(node.this)
        bounds = [_literal_type(node.args["low"]), _literal_type(node.args["high"])]
        if column_type and any(b and _incompatible(column_type, b) for b in bounds):
            raise _located(
                SYNTAX_ERROR,
                f"Cannot check if {column_type} is BETWEEN {bounds[0]} and {bounds[1]}",
                sql,
                node,
            )


def _guard_divisions(tree: exp.Expression) -> None:
    """Make ``x / 0`` and ``x % 0`` fail (Presto) instead of returning NULL (DuckDB)."""
    for node in list(tree.find_all(exp.Div, exp.Mod, exp.IntDiv)):
        divisor = node.expression
        if isinstance(divisor, exp.Literal) and not divisor.is_string:
            try:
                if float(divisor.this) != 0:
                    continue
            except ValueError:
                pass
        node.set("expression", exp.Anonymous(this=tpch.NONZERO_MACRO, expressions=[divisor.copy()]))


_DATE_UNITS = {"DAY", "WEEK", "MONTH", "QUARTER", "YEAR"}


def _is_date(node: exp.Expression | None) -> bool:
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.Column):
        return _column_type(node) == "date"
    return isinstance(node, exp.Cast) and node.to.this == exp.DataType.Type.DATE


def _unit(node: exp.Expression | None) -> str:
    unit = node.args.get("unit") if node is not None else None
    return unit.name.upper() if isinstance(unit, exp.Expression) else str(unit or "").upper()


def _keep_date_arithmetic_dates(tree: exp.Expression) -> None:
    """Keep ``date_add('day', 1, d)``, ``d + INTERVAL '1' DAY``, ``date_trunc('month', d)`` DATEs.

    Presto returns a date for these when ``d`` is a date; DuckDB returns a timestamp. Where the
    operand is known to be a date (a TPC-H date column, a DATE literal or cast, or such an
    expression) the result is cast back to DATE.
    """
    for node in reversed(list(tree.walk(bfs=False))):
        if isinstance(node, (exp.DateAdd, exp.DateSub, exp.TimestampTrunc, exp.DateTrunc)):
            keep = _is_date(node.this) and _unit(node) in _DATE_UNITS
        elif isinstance(node, (exp.Add, exp.Sub)) and isinstance(node.expression, exp.Interval):
            keep = _is_date(node.this) and _unit(node.expression) in _DATE_UNITS
        else:
            continue
        if keep:
            node.replace(exp.cast(node.copy(), exp.DataType.Type.DATE))


def _name_outputs(tree: exp.Expression) -> None:
    """Name unaliased expression columns ``_colN`` like Presto."""
    select = tree
    while isinstance(select, (exp.SetOperation, exp.Subquery)):
        select = select.this
    if not isinstance(select, exp.Select):
        return
    named = []
    for index, projection in enumerate(select.expressions):
        if isinstance(projection, (exp.Alias, exp.Column, exp.Star)):
            named.append(projection)
        else:
            named.append(exp.alias_(projection, f"_col{index}"))
    select.set("expressions", named)


def _landed_orders(day: date) -> exp.Expression:
    return exp.column("orderdate") <= exp.cast(exp.Literal.string(day.isoformat()), "date")


def _hide_unlanded(tree: exp.Expression, day: date) -> None:
    """Read ``orders`` and ``lineitem`` through filters that hide what lands after ``day``.

    Each resolved reference ``tpch.<schema>.orders`` becomes ``(SELECT * FROM
    tpch.<schema>.orders WHERE orderdate <= DATE 'day') AS <its alias or orders>``, and
    ``lineitem`` keeps the rows whose ``orderkey`` is among those orders. The subquery takes the
    table's alias (with column aliases) and name, so the query's column references still bind;
    only qualifiers naming the schema (``tiny.orders.orderkey``) are shortened to the table name.
    """
    renamed: set[str] = set()
    for table in list(tree.find_all(exp.Table)):
        # Resolved TPC-H tables have a catalog; CTE references were left without one.
        if table.catalog != tpch.CATALOG or table.name not in ("orders", "lineitem"):
            continue
        inner = table.copy()
        inner.set("alias", None)
        inner.set("pivots", None)
        if table.name == "orders":
            condition = _landed_orders(day)
        else:
            orders = exp.table_("orders", db=table.db, catalog=tpch.CATALOG)
            landed = exp.select("orderkey").from_(orders).where(_landed_orders(day))
            condition = exp.column("orderkey").isin(query=landed)
        alias = table.args.get("alias")
        if alias is None:
            alias = exp.TableAlias(this=exp.to_identifier(table.name))
            renamed.add(table.name)
        visible = exp.select("*").from_(inner).where(condition)
        table.replace(exp.Subquery(this=visible, alias=alias, pivots=table.args.get("pivots")))
    for column in tree.find_all(exp.Column):
        if column.table in renamed and column.args.get("db") is not None:
            column.set("db", None)
            column.set("catalog", None)


def _split_top_level(text: str, tokens: list[Token]) -> list[str]:
    depth, start, parts = 0, 0, []
    for token in tokens:
        if token.token_type in (TokenType.L_PAREN, TokenType.L_BRACKET):
            depth += 1
        elif token.token_type in (TokenType.R_PAREN, TokenType.R_BRACKET):
            depth -= 1
        elif token.token_type == TokenType.COMMA and depth == 0:
            parts.append(text[start : token.start])
            start = token.end + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _bind_parameters(statement: str, params_text: str) -> str:
    """Substitute ``EXECUTE ... USING`` literals for the ``?`` placeholders of ``statement``."""
    dialect = sqlglot.Dialect.get_or_raise("presto")
    params = _split_top_level(params_text, dialect.tokenize(params_text)) if params_text else []
    placeholders = [t for t in dialect.tokenize(statement) if t.token_type == TokenType.PLACEHOLDER]
    if len(placeholders) != len(params):
        raise PrestoError(
            SYNTAX_ERROR,
            f"Incorrect number of parameters: expected {len(placeholders)} but found {len(params)}",
        )
    out, position = [], 0
    for token, param in zip(placeholders, params, strict=True):
        out.append(statement[position : token.start])
        out.append(f"({param})")
        position = token.end + 1
    out.append(statement[position:])
    return "".join(out)


def parse_prepared_header(value: str | None) -> dict[str, str]:
    """Parse ``X-Presto-Prepared-Statement: name=urlencoded-sql,...``."""
    prepared: dict[str, str] = {}
    for item in (value or "").split(","):
        if "=" in item:
            name, sql = item.split("=", 1)
            prepared[name.strip().lower()] = urllib.parse.unquote_plus(sql.strip())
    return prepared
