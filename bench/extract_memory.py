"""Benchmark: time and peak memory of the streaming Presto -> S3 extraction.

Usage: ``PYTHONPATH=. .venv/bin/python bench/extract_memory.py [--schema sf1] [--chunk-rows 50000]``.
The Presto stand-in and the local AWS endpoint run as separate processes (``LocalStack``), so the
peak RSS reported is the extracting process's own: the Airflow hooks, one chunk of rows and its
Parquet part. The query is the shipped training query over the whole TPC-H date range (sf1:
1.5 M orders joined to 6 M line items), so the result has one row per order.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "plugins"))

from local_stack.stack import LocalStack  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    """Run one extraction and print rows, parts, seconds and peak RSS."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--schema", default="sf1", choices=["tiny", "sf1"])
    parser.add_argument("--chunk-rows", type=int, default=50_000)
    args = parser.parse_args()
    sql = (ROOT / "include/sql/tpch_orders/training.sql").read_text()
    sql = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    sql = (
        sql.replace("{{ source.catalog }}", "tpch")
        .replace("{{ source.schema }}", args.schema)
        .replace("{{ window_start(data_interval_end) }}", "1992-01-01")
        .replace("{{ data_interval_end | ds }}", "1998-12-31")
    )
    with tempfile.TemporaryDirectory() as home:
        stack = LocalStack(
            presto_port=_free_port(),
            aws_port=_free_port(),
            home=Path(home),
            presto_schemas="tiny,sf1",
        )
        with stack:
            os.environ.update(
                {k: v for k, v in stack.airflow_env().items() if k.startswith("AIRFLOW_CONN_")}
            )
            from mlops_sagemaker.extract import extract_to_s3

            # Warm the schema (sf1 is generated on first use) outside the timed run.
            warm = sql.replace("SELECT", "SELECT /* warm */", 1) + "\nLIMIT 1"
            extract_to_s3(sql=warm, presto_conn_id="presto_default", aws_conn_id="aws_default",
                          bucket=stack.bucket, prefix="bench/warm", chunk_rows=10)  # fmt: skip
            before = _rss_mb()
            started = time.perf_counter()
            manifest = extract_to_s3(
                sql=sql,
                presto_conn_id="presto_default",
                aws_conn_id="aws_default",
                bucket=stack.bucket,
                prefix="bench/extract",
                chunk_rows=args.chunk_rows,
            )
            elapsed = time.perf_counter() - started
    print(
        json.dumps(
            {
                "schema": args.schema,
                "chunk_rows": args.chunk_rows,
                "rows": manifest["row_count"],
                "parts": manifest["part_count"],
                "seconds": round(elapsed, 1),
                "rows_per_second": round(manifest["row_count"] / elapsed),
                "peak_rss_mb_before": round(before),
                "peak_rss_mb_after": round(_rss_mb()),
            }
        )
    )


if __name__ == "__main__":
    main()
