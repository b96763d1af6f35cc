"""A Hive catalog for the stand-in: ``CREATE TABLE ... WITH (external_location) AS <query>``.

What it serves: the one statement the ``presto_unload`` extraction sends (and its clean-up),
for a catalog configured like Presto's Hive connector on S3 (``etc/catalog/<name>.properties``,
see :func:`load_settings`):

* ``CREATE SCHEMA [IF NOT EXISTS] <catalog>.<schema>``;
* ``CREATE TABLE [IF NOT EXISTS] <name> [(aliases)] WITH (format = 'PARQUET',
  external_location = 's3://bucket/prefix/') AS <query>``: DuckDB runs the (translated) query,
  writes its result as ``writer_count`` Snappy Parquet files (Presto's ``task.writer-count``:
  one file per writer) and the files go to the S3 endpoint of the catalog's ``hive.s3.*``
  settings, named ``<query id>_<uuid>`` without extension as Presto's Hive writer names them.
  The answer is Presto's update count: one column ``rows`` (bigint), update type
  ``CREATE TABLE``;
* ``DROP TABLE [IF EXISTS] <name>``: removes the metadata only, as Presto's Hive connector does
  for an external table; the files stay.

The table metadata lives in memory (a stand-in restart forgets it, like a fresh metastore).

Presto's rules, checked in Presto's order (each cites where Presto has it):

1. a destination that exists fails in the analyzer (``StatementAnalyzer
   .visitCreateTableAsSelect``: ``Destination table '%s' already exists``; ``IF NOT EXISTS``
   makes it a no-op with 0 rows);
2. table properties are checked against the connector's list (``TablePropertyManager``:
   ``Catalog '%s' does not support table property '%s'``, ``INVALID_TABLE_PROPERTY``; the Hive
   connector's list is ``presto-hive/.../HiveTableProperties.java``);
3. ``HiveMetadata.beginCreateTable``: an external location needs
   ``hive.non-managed-table-creates-enabled`` (default true) and
   ``hive.non-managed-table-writes-enabled`` (default false): ``Creating non-managed Hive
   tables is disabled`` / ``Writes to non-managed Hive tables is disabled`` (``NOT_SUPPORTED``);
   a location that is not a URI: ``External location is not a valid file system URI: ...``
   (``INVALID_TABLE_PROPERTY``); then the schema must exist (``SchemaNotFoundException``:
   ``Schema %s not found``, ``NOT_FOUND``).

Stand-in limits (``NOT_SUPPORTED``, never a different result): only ``format = 'PARQUET'``, only
``s3://``/``s3a://`` external locations (no managed tables: there is no warehouse directory),
no partitioning or bucketing properties, no reads of Hive tables.
"""

from __future__ import annotations

import logging
import re
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import sqlglot
from sqlglot.tokens import Token, TokenType

from . import errors
from .errors import PrestoError

log = logging.getLogger(__name__)

# prestodb presto-hive/src/main/java/com/facebook/presto/hive/HiveTableProperties.java: the table
# properties the Hive connector knows. The stand-in implements the first two.
SUPPORTED_PROPERTIES = ("format", "external_location")
KNOWN_PROPERTIES = frozenset(
    {
        *SUPPORTED_PROPERTIES,
        "partitioned_by",
        "bucketed_by",
        "bucket_count",
        "sorted_by",
        "orc_bloom_filter_columns",
        "orc_bloom_filter_fpp",
        "avro_schema_url",
        "preferred_ordering_columns",
        "encrypt_table",
        "encrypt_columns",
        "dwrf_encryption_algorithm",
        "dwrf_encryption_provider",
    }
)
# prestodb HiveStorageFormat: the values ``format`` accepts (upper-cased by the property decoder).
STORAGE_FORMATS = frozenset(
    {"ORC", "DWRF", "ALPHA", "PARQUET", "AVRO", "RCBINARY", "RCTEXT", "SEQUENCEFILE", "JSON",
     "TEXTFILE", "CSV", "PAGEFILE"}
)  # fmt: skip
# StandardErrorCode (presto-spi): INVALID_TABLE_PROPERTY(0x0000_0012), ALREADY_EXISTS(0x0000_000C).
INVALID_TABLE_PROPERTY = errors.ErrorCode(18, "INVALID_TABLE_PROPERTY", "USER_ERROR")
ALREADY_EXISTS = errors.ErrorCode(12, "ALREADY_EXISTS", "USER_ERROR")
# Presto's Hive connector reports file-system failures as EXTERNAL errors (presto-hive
# HiveErrorCode: HIVE_FILESYSTEM_ERROR(16, EXTERNAL), codes offset by 0x0100_0000).
HIVE_FILESYSTEM_ERROR = errors.ErrorCode(0x0100_0000 + 16, "HIVE_FILESYSTEM_ERROR", "EXTERNAL")

_NAME = r'(?:"[^"]+"|[A-Za-z_][\w$]*)'
_QUALIFIED = rf"{_NAME}(?:\s*\.\s*{_NAME}){{0,2}}"
_CREATE_SCHEMA = re.compile(
    rf"CREATE\s+SCHEMA\s+(?P<exists>IF\s+NOT\s+EXISTS\s+)?(?P<name>{_QUALIFIED})\s*", re.I
)
_DROP_TABLE = re.compile(
    rf"DROP\s+TABLE\s+(?P<exists>IF\s+EXISTS\s+)?(?P<name>{_QUALIFIED})\s*", re.I
)
_S3_LOCATION = re.compile(r"^s3a?://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(?P<key>.*)$")
DDL_WORDS = re.compile(r"(CREATE|DROP)\b", re.I)


@dataclass(frozen=True)
class HiveSettings:
    """What the stand-in reads from ``etc/catalog/<name>.properties`` (Presto's property names)."""

    name: str
    non_managed_writes: bool = False
    non_managed_creates: bool = True
    s3_endpoint: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_path_style: bool = False
    s3_region: str = "us-east-1"


def load_settings(path: str | Path) -> HiveSettings:
    """Read a Presto catalog file (``key=value`` lines, ``#`` comments); the catalog is named
    after the file, as Presto names it. ``connector.name`` must be a Hive connector."""
    path = Path(path)
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    connector = values.get("connector.name", "")
    if not connector.startswith("hive"):
        raise ValueError(f"{path}: connector.name {connector!r} is not a Hive connector")

    def flag(key: str, default: bool) -> bool:
        return values.get(key, str(default)).lower() == "true"

    return HiveSettings(
        name=path.stem,
        non_managed_writes=flag("hive.non-managed-table-writes-enabled", False),
        non_managed_creates=flag("hive.non-managed-table-creates-enabled", True),
        s3_endpoint=values.get("hive.s3.endpoint"),
        s3_access_key=values.get("hive.s3.aws-access-key"),
        s3_secret_key=values.get("hive.s3.aws-secret-key"),
        s3_path_style=flag("hive.s3.path-style-access", False),
        s3_region=values.get("hive.s3.region", "us-east-1"),
    )


@dataclass
class ActionPlan:
    """A statement with side effects, run when the query starts: ``run(cursor, query_id)``
    returns the rows to answer with; ``schemas`` are TPC-H schemas it reads."""

    run: Callable[[duckdb.DuckDBPyConnection, str], Any]
    update_type: str
    schemas: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class _Ctas:
    catalog: str
    schema: str
    table: str
    if_not_exists: bool
    aliases: list[str]
    properties: dict[str, Token]
    query: str


def unquote(name: str) -> str:
    """An identifier as Presto stores it: quotes removed, lower case."""
    name = name.strip()
    if name.startswith('"') and name.endswith('"'):
        return name[1:-1].replace('""', '"').lower()
    return name.lower()


def split_name(text: str) -> list[str]:
    """The parts of a dotted name."""
    return [unquote(p) for p in re.findall(_NAME, text)]


class HiveCatalog:
    """Schemas and external tables of one Hive catalog; writes go to the catalog's S3."""

    def __init__(self, settings: HiveSettings, writer_count: int = 1) -> None:
        if writer_count < 1:
            raise ValueError("writer_count must be at least 1")
        self.settings = settings
        self.writer_count = writer_count
        self._schemas: set[str] = set()
        self._tables: dict[tuple[str, str], str] = {}  # (schema, table) -> external location
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """The catalog name (the properties file's name)."""
        return self.settings.name

    def location(self, schema: str, table: str) -> str | None:
        """The external location of a table, or None when it does not exist."""
        with self._lock:
            return self._tables.get((schema, table))

    # -- statements --------------------------------------------------------------------------

    def plan(
        self,
        body: str,
        session: tuple[str | None, str | None],
        translate: Callable[[str], tuple[str, set[str]]],
    ) -> ActionPlan:
        """Plan a ``CREATE SCHEMA``/``CREATE TABLE AS``/``DROP TABLE`` statement.

        ``session`` is the session's (catalog, schema) for unqualified names; ``translate``
        turns the query of a ``CREATE TABLE AS`` into DuckDB SQL and the TPC-H schemas it reads
        (raising Presto's errors for the query itself).
        """
        text = body.rstrip()
        if m := _CREATE_SCHEMA.fullmatch(text):
            catalog, schema = _qualify(split_name(m["name"]), session, 2)
            self._require_catalog(catalog)
            return ActionPlan(
                lambda con, qid: self._create_schema(schema, bool(m["exists"])), "CREATE SCHEMA"
            )
        if m := _DROP_TABLE.fullmatch(text):
            catalog, schema, table = _qualify(split_name(m["name"]), session, 3)
            self._require_catalog(catalog)
            return ActionPlan(
                lambda con, qid: self._drop(schema, table, bool(m["exists"])), "DROP TABLE"
            )
        ctas = _parse_ctas(text, session)
        self._require_catalog(ctas.catalog)
        return self._plan_ctas(ctas, translate)

    def _require_catalog(self, catalog: str) -> None:
        if catalog == "tpch":
            # Presto's TPC-H connector implements no metadata writes (ConnectorMetadata default).
            raise PrestoError(
                errors.NOT_SUPPORTED, "This connector does not support creating tables"
            )
        if catalog != self.name:
            raise PrestoError(errors.SYNTAX_ERROR, f"Catalog {catalog} does not exist")

    def _create_schema(self, schema: str, if_not_exists: bool) -> tuple[list, list]:
        with self._lock:
            if schema in self._schemas and not if_not_exists:
                # prestodb CreateSchemaTask: "Schema '%s' already exists".
                raise PrestoError(ALREADY_EXISTS, f"Schema '{self.name}.{schema}' already exists")
            self._schemas.add(schema)
        return [], []

    def _drop(self, schema: str, table: str, if_exists: bool) -> tuple[list, list]:
        with self._lock:
            if (schema, table) not in self._tables:
                if if_exists:
                    return [], []
                # prestodb DropTableTask: "Table '%s' does not exist" (a semantic error).
                raise PrestoError(
                    errors.SYNTAX_ERROR, f"Table '{self.name}.{schema}.{table}' does not exist"
                )
            # An external table: Presto's Hive connector drops the metadata, not the files.
            del self._tables[(schema, table)]
        return [], []

    def _plan_ctas(
        self, ctas: _Ctas, translate: Callable[[str], tuple[str, set[str]]]
    ) -> ActionPlan:
        target = f"{self.name}.{ctas.schema}.{ctas.table}"
        if self.location(ctas.schema, ctas.table) is not None:
            if ctas.if_not_exists:
                return ActionPlan(lambda con, qid: ([("rows", "bigint")], [[0]]), "CREATE TABLE")
            raise PrestoError(errors.SYNTAX_ERROR, f"Destination table '{target}' already exists")
        location = self._check_properties(ctas.properties)
        duck_sql, schemas = translate(ctas.query)
        self._check_write(ctas.schema, location)

        def run(con: duckdb.DuckDBPyConnection, query_id: str) -> tuple[list, list]:
            rows = self._write(con, duck_sql, ctas.aliases, location, query_id)
            with self._lock:
                self._tables[(ctas.schema, ctas.table)] = location
            log.info("created %s at %s: %d rows", target, location, rows)
            return [("rows", "bigint")], [[rows]]

        return ActionPlan(run, "CREATE TABLE", schemas)

    def _check_properties(self, properties: dict[str, Token]) -> str:
        """The external location, after Presto's property checks."""
        for name in properties:
            if name not in KNOWN_PROPERTIES:
                raise PrestoError(
                    INVALID_TABLE_PROPERTY,
                    f"Catalog '{self.name}' does not support table property '{name}'",
                )
        unsupported = sorted(set(properties) - set(SUPPORTED_PROPERTIES))
        if unsupported:
            raise PrestoError(
                errors.NOT_SUPPORTED,
                f"The Presto stand-in does not support the table properties {unsupported}",
            )
        values = {n: _string_value(n, token) for n, token in properties.items()}
        storage = values.get("format", "ORC").upper()  # hive.storage-format defaults to ORC
        if storage not in STORAGE_FORMATS:
            raise PrestoError(
                INVALID_TABLE_PROPERTY,
                f"Unable to set table property 'format' to ['{values['format']}']: "
                f"No enum constant com.facebook.presto.hive.HiveStorageFormat.{storage}",
            )
        if storage != "PARQUET":
            raise PrestoError(
                errors.NOT_SUPPORTED,
                f"The Presto stand-in writes format 'PARQUET' only, not {storage}",
            )
        if "external_location" not in values:
            raise PrestoError(
                errors.NOT_SUPPORTED,
                "The Presto stand-in writes external tables only: set external_location",
            )
        return values["external_location"]

    def _check_write(self, schema: str, location: str) -> None:
        """HiveMetadata.beginCreateTable's checks, in its order."""
        if not self.settings.non_managed_creates:
            raise PrestoError(errors.NOT_SUPPORTED, "Creating non-managed Hive tables is disabled")
        if not self.settings.non_managed_writes:
            raise PrestoError(errors.NOT_SUPPORTED, "Writes to non-managed Hive tables is disabled")
        if "://" not in location or location.startswith(("://", "/")) or " " in location:
            raise PrestoError(
                INVALID_TABLE_PROPERTY,
                f"External location is not a valid file system URI: {location}",
            )
        if not _S3_LOCATION.match(location):
            raise PrestoError(
                errors.NOT_SUPPORTED,
                f"The Presto stand-in writes to s3:// locations only, not {location}",
            )
        with self._lock:
            if schema not in self._schemas:
                raise PrestoError(errors.NOT_FOUND, f"Schema {schema} not found")

    # -- writing -----------------------------------------------------------------------------

    def _write(
        self,
        con: duckdb.DuckDBPyConnection,
        duck_sql: str,
        aliases: list[str],
        location: str,
        query_id: str,
    ) -> int:
        """Run the query into Parquet files (one per writer, rows in query order) and upload
        them under ``location``; return the row count."""
        scratch = f"presto_standin_ctas_{uuid.uuid4().hex}"
        con.execute(f'CREATE TEMP TABLE "{scratch}" AS {duck_sql}')
        try:
            names = [d[0] for d in con.execute(f'SELECT * FROM "{scratch}" LIMIT 0').description]
            if aliases and len(aliases) != len(names):
                raise PrestoError(
                    errors.SYNTAX_ERROR,
                    f"Column alias list has {len(aliases)} entries but the query has "
                    f"{len(names)} columns",
                )
            # Hive stores column names in lower case.
            columns = ", ".join(
                f'"{n}" AS "{(a or n).lower()}"'
                for n, a in zip(names, aliases or [None] * len(names), strict=True)
            )
            total = con.execute(f'SELECT count(*) FROM "{scratch}"').fetchone()[0]
            with tempfile.TemporaryDirectory(prefix="presto-standin-ctas-") as folder:
                files = []
                for index, (offset, count) in enumerate(_slices(total, self.writer_count)):
                    path = Path(folder) / f"{index}.parquet"
                    con.execute(
                        f'COPY (SELECT {columns} FROM "{scratch}" LIMIT {count} OFFSET {offset}) '
                        f"TO '{path}' (FORMAT PARQUET, COMPRESSION SNAPPY)"
                    )
                    files.append(path)
                self._upload(files, location, query_id)
        finally:
            con.execute(f'DROP TABLE IF EXISTS "{scratch}"')
        return int(total)

    def _upload(self, files: Iterable[Path], location: str, query_id: str) -> None:
        match = _S3_LOCATION.match(location)
        assert match is not None
        prefix = (
            match["key"] if not match["key"] or match["key"].endswith("/") else match["key"] + "/"
        )
        try:
            s3 = self._s3()
            for path in files:
                key = f"{prefix}{query_id}_{uuid.uuid4()}"
                s3.upload_file(str(path), match["bucket"], key)
        except Exception as err:
            raise PrestoError(
                HIVE_FILESYSTEM_ERROR, f"Error writing to {location}: {type(err).__name__}: {err}"
            ) from None

    def _s3(self) -> Any:
        import boto3
        from botocore.config import Config

        settings = self.settings
        return boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key,
            aws_secret_access_key=settings.s3_secret_key,
            config=Config(s3={"addressing_style": "path" if settings.s3_path_style else "auto"}),
        )


def _slices(total: int, writers: int) -> list[tuple[int, int]]:
    """(offset, count) of each writer's file: contiguous, near-equal, none empty."""
    files = min(writers, total)
    size, extra = divmod(total, files) if files else (0, 0)
    slices, offset = [], 0
    for index in range(files):
        count = size + (1 if index < extra else 0)
        slices.append((offset, count))
        offset += count
    return slices


def _string_value(name: str, token: Token) -> str:
    if token.token_type != TokenType.STRING:
        raise PrestoError(
            errors.NOT_SUPPORTED,
            f"The Presto stand-in takes a string literal for table property '{name}'",
        )
    return token.text


def _qualify(parts: list[str], session: tuple[str | None, str | None], size: int) -> tuple:
    """``parts`` completed with the session's catalog (and schema) to ``size`` parts, with
    Presto's messages (``MetadataUtil.createQualifiedObjectName``)."""
    if len(parts) > size or not parts:
        raise PrestoError(errors.SYNTAX_ERROR, f"Too many dots in name: {'.'.join(parts)}")
    defaults = [d for d in session[: size - 1]]
    missing = size - len(parts)
    if any(d is None for d in defaults[:missing]):
        what = "Catalog" if defaults[0] is None else "Schema"
        raise PrestoError(
            errors.SYNTAX_ERROR, f"{what} must be specified when session {what.lower()} is not set"
        )
    return tuple([*defaults[:missing], *parts])


def _parse_properties(tokens: list[Token]) -> dict[str, Token]:
    """``name = value, ...`` (top-level commas) -> name: value token (a single token, or the
    first of a longer expression, which the caller refuses)."""
    properties: dict[str, Token] = {}
    depth, start = 0, 0
    for index, token in enumerate([*tokens, None]):
        if token is not None and token.token_type in (TokenType.L_PAREN, TokenType.L_BRACKET):
            depth += 1
        elif token is not None and token.token_type in (TokenType.R_PAREN, TokenType.R_BRACKET):
            depth -= 1
        elif token is None or (token.token_type == TokenType.COMMA and depth == 0):
            part = tokens[start:index]
            value = (
                part[2]
                if len(part) == 3
                else Token(TokenType.VAR, " ".join(t.text for t in part[2:]))
            )
            properties[unquote(part[0].text)] = value
            start = index + 1
    return properties


def _parse_ctas(text: str, session: tuple[str | None, str | None]) -> _Ctas:
    """Split ``CREATE TABLE [IF NOT EXISTS] name [(aliases)] [WITH (props)] AS query`` (the
    grammar has accepted it already) into its parts, with sqlglot's Presto tokens."""
    tokens = sqlglot.Dialect.get_or_raise("presto").tokenize(text)
    words = [t.text.upper() for t in tokens]
    if words[:2] != ["CREATE", "TABLE"]:
        raise PrestoError(
            errors.NOT_SUPPORTED,
            "The Presto stand-in supports CREATE SCHEMA, CREATE TABLE ... AS and DROP TABLE only",
        )
    position = 2
    if_not_exists = words[2:5] == ["IF", "NOT", "EXISTS"]
    position += 3 if if_not_exists else 0
    name_end = position
    name_types = (TokenType.VAR, TokenType.IDENTIFIER, TokenType.DOT)
    while name_end < len(tokens) and tokens[name_end].token_type in name_types:
        name_end += 1
    name = text[tokens[position].start : tokens[name_end - 1].end + 1]
    catalog, schema, table = _qualify(split_name(name), session, 3)
    position = name_end
    aliases: list[str] = []
    if position < len(tokens) and tokens[position].token_type == TokenType.L_PAREN:
        close = _closing(tokens, position)
        aliases = [
            unquote(t.text) for t in tokens[position + 1 : close] if t.token_type in name_types[:2]
        ]
        position = close + 1
    properties: dict[str, Token] = {}
    if position < len(tokens) and words[position] == "WITH":
        close = _closing(tokens, position + 1)
        properties = _parse_properties(tokens[position + 2 : close])
        position = close + 1
    if position >= len(tokens) or words[position] != "AS":
        raise PrestoError(
            errors.NOT_SUPPORTED,
            "The Presto stand-in supports CREATE TABLE ... AS <query> only (no column list)",
        )
    query = text[tokens[position + 1].start :]
    if re.search(r"\bWITH\s+(?:NO\s+)?DATA\s*$", query, re.I):
        raise PrestoError(
            errors.NOT_SUPPORTED, "The Presto stand-in does not support WITH [NO] DATA"
        )
    return _Ctas(catalog, schema, table, if_not_exists, aliases, properties, query)


def _closing(tokens: list[Token], opening: int) -> int:
    depth = 0
    for index in range(opening, len(tokens)):
        if tokens[index].token_type == TokenType.L_PAREN:
            depth += 1
        elif tokens[index].token_type == TokenType.R_PAREN:
            depth -= 1
            if depth == 0:
                return index
    raise PrestoError(errors.SYNTAX_ERROR, "unbalanced parentheses")
