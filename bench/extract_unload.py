"""Benchmark: streaming extraction vs ``presto_unload`` (Presto writes S3 itself) at TPC-H sf1.

Usage: ``PYTHONPATH=. .venv/bin/python bench/extract_unload.py [--runs 3] [--schema sf1]``.

The query is the shipped training query over the whole TPC-H date range (sf1: 1.5 M orders
joined to 6 M line items, one row per order). The Presto stand-in (with its Hive catalog on the
local S3, 4 writers) and the local AWS endpoint run as separate processes (``LocalStack``).
Each extraction runs in a fresh Python process standing in for the Airflow worker: it imports
the Airflow hooks, runs ``extract_to_s3`` or ``unload_to_s3`` and reports its wall time and its
own peak RSS (``ru_maxrss``), so one run's memory never shows in the next. Runs alternate
between the modes (streaming, unload, streaming, ...); the medians and their ratio are printed.
What the Presto side costs (the stand-in's DuckDB writing Parquet) is in the wall time, not in
the worker's RSS: on a real cluster that work is spread over Presto's workers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = ("streaming", "presto_unload")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def training_sql(schema: str) -> str:
    """The shipped training query over every TPC-H order date, templated as bench/extract_memory.py
    does it."""
    sql = (ROOT / "include/sql/tpch_orders/training.sql").read_text()
    sql = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return (
        sql.replace("{{ source.catalog }}", "tpch")
        .replace("{{ source.schema }}", schema)
        .replace("{{ window_start(data_interval_end) }}", "1992-01-01")
        .replace("{{ data_interval_end | ds }}", "1998-12-31")
    )


def child(mode: str, sql_file: str, bucket: str, prefix: str) -> None:
    """One extraction in this process (the worker); prints its result as JSON."""
    sys.path.insert(0, str(ROOT / "plugins"))
    from mlops_sagemaker.extract import extract_to_s3
    from mlops_sagemaker.unload import unload_to_s3

    sql = Path(sql_file).read_text()
    common = {"sql": sql, "presto_conn_id": "presto_default", "aws_conn_id": "aws_default",
              "bucket": bucket, "prefix": prefix}  # fmt: skip
    imported_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    if mode == "streaming":
        manifest = extract_to_s3(**common, chunk_rows=50_000)
    else:
        manifest = unload_to_s3(**common, catalog="hive", schema="mlops_scratch")
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"mode": mode, "seconds": seconds, "peak_rss_mb": peak_mb,
                      "rss_after_imports_mb": imported_mb, "rows": manifest["row_count"],
                      "parts": manifest["part_count"]}))  # fmt: skip


def _run_child(env: dict[str, str], mode: str, sql_file: Path, bucket: str, prefix: str) -> dict:
    argv = [sys.executable, __file__, "--child", mode, "--sql-file", str(sql_file),
            "--bucket", bucket, "--prefix", prefix]  # fmt: skip
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{mode} run failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _summary(runs: list[dict]) -> dict:
    by_mode = {m: [r for r in runs if r["mode"] == m] for m in MODES}
    medians = {
        m: {
            "seconds": round(statistics.median(r["seconds"] for r in rs), 2),
            "peak_rss_mb": round(statistics.median(r["peak_rss_mb"] for r in rs)),
            "rss_after_imports_mb": round(statistics.median(r["rss_after_imports_mb"] for r in rs)),
            "rows": rs[0]["rows"],
            "parts": rs[0]["parts"],
        }
        for m, rs in by_mode.items()
    }
    stream, unload = medians["streaming"], medians["presto_unload"]
    return {
        "runs_per_mode": len(by_mode["streaming"]),
        "median": medians,
        "unload_vs_streaming": {
            "wall_time_ratio": round(unload["seconds"] / stream["seconds"], 3),
            "peak_rss_ratio": round(unload["peak_rss_mb"] / stream["peak_rss_mb"], 3),
        },
    }


def main() -> None:
    """Start the stack, warm the schema, run the interleaved extractions, print the medians."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--schema", default="sf1", choices=["tiny", "sf1"])
    parser.add_argument("--runs", type=int, default=3, help="runs per mode (at least 3)")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--sql-file", help=argparse.SUPPRESS)
    parser.add_argument("--bucket", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.sql_file, args.bucket, args.prefix)
        return
    sys.path.insert(0, str(ROOT))
    from local_stack.stack import LocalStack

    with tempfile.TemporaryDirectory() as home:
        stack = LocalStack(presto_port=_free_port(), aws_port=_free_port(), home=Path(home),
                           presto_schemas="tiny,sf1")  # fmt: skip
        with stack:
            env = {
                **stack.airflow_env(),
                "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT)]),
            }
            sql_file = Path(home) / "training.sql"
            sql_file.write_text(training_sql(args.schema))
            # Generate the schema (sf1: on first use) outside the timed runs.
            stack.presto_execute(f"SELECT count(*) FROM tpch.{args.schema}.orders")
            runs = []
            for index in range(max(3, args.runs)):
                for mode in MODES:
                    run = _run_child(env, mode, sql_file, stack.bucket, f"bench/{mode}")
                    print(f"run {index + 1} {mode}: {run['seconds']:.1f} s, peak RSS {run['peak_rss_mb']:.0f} MB",
                          file=sys.stderr)  # fmt: skip
                    runs.append(run)
    print(json.dumps({"schema": args.schema, **_summary(runs)}, indent=2))


if __name__ == "__main__":
    main()
