"""Presto stand-in: a small server speaking Presto's client protocol over DuckDB's TPC-H data.

Why it exists: the DAGs extract their data from Presto with Airflow's ``PrestoHook``
(``presto-python-client``). Tests and the local demo stack need a Presto coordinator, but no
Presto server can be downloaded here and Java is not used. This package answers the HTTP
protocol those clients speak (``POST /v1/statement``, paged ``GET nextUri``, ``DELETE`` to
cancel, Presto's error payloads) so the real client and hook run unchanged against it.

What it serves: catalog ``tpch`` with the schemas of Presto's TPC-H connector that fit a laptop,
``tiny`` (scale factor 0.01, 15,000 orders) and ``sf1`` (scale factor 1, generated on first use,
about 10 s and 2 GB of memory), with the connector's table and column names and types
(``orders.orderkey`` BIGINT, ``lineitem.extendedprice`` DOUBLE, ``orders.orderdate`` DATE ...).
The data is generated offline by DuckDB's ``tpch`` extension (the ``duckdb-extension-tpch``
wheel) and queried by DuckDB; Presto SQL is translated with sqlglot. Results stream: each page
is fetched from DuckDB when the client asks for it.

Fidelity: what it cannot translate faithfully fails loudly with a Presto ``NOT_SUPPORTED`` error
naming the problem, instead of returning different data. Known differences: ``varchar(n)``
columns are reported as ``varchar``; decimal division gives ``double``; only read queries,
``SHOW``, ``DESCRIBE`` and prepared statements are supported, plus, with a Hive catalog file
(``hive_catalog``), ``CREATE SCHEMA``, ``CREATE TABLE ... WITH (external_location) AS`` writing
Parquet to S3 and ``DROP TABLE`` (``hive.py``); pages are counted in rows, not bytes.

Use in tests::

    with PrestoStandin(port=0, schemas=("tiny",)) as presto:
        conn = prestodb.dbapi.connect(host="127.0.0.1", port=presto.port, user="test",
                                      catalog="tpch", schema="tiny")

and from a shell: ``python -m local_stack.presto_standin --host 127.0.0.1 --port 8080``.
"""

from .errors import PrestoError
from .server import PrestoStandin

__all__ = ["PrestoError", "PrestoStandin"]
