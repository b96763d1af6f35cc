"""Benchmark: our streaming extraction against the Amazon provider and two plain fetch loops.

Usage::

    PYTHONPATH=. .venv/bin/python bench/extract_compare.py [--schema sf1] [--rounds 3]
        [--start 1992-01-01] [--end 1998-12-31] [--chunk-rows 50000] [--methods ours,provider,...]
        [--profile METHOD] [--json results.json]

Methods, each run in a fresh subprocess (so peak RSS is that method's own):

* ``ours``: :func:`mlops_sagemaker.extract.extract_to_s3` to Parquet parts (``--chunk-rows``).
* ``provider``: the Amazon provider's ``SqlToS3Operator`` (``file_format="parquet"``) with its
  ``PrestoHook`` on the same connection and the same local S3.
* ``raw_fetch``: :func:`~mlops_sagemaker.extract.start_streaming_query` (the streaming start our
  code uses), then ``fetchmany(chunk_rows)`` until empty; nothing is converted or written.
* ``client_fetch``: the Presto client's own ``cursor.execute`` (reads every page first), then
  ``fetchmany(chunk_rows)``.

One ``LocalStack`` (Presto stand-in + local AWS endpoint, separate processes) serves every run;
the schema is warmed (``sf1`` is generated on first use) before the first timed run. Methods are
interleaved: round ``r`` runs them in the listed order rotated by ``r``. Every worker imports the
same modules before its baseline RSS is taken, so "RSS above imports" compares like with like.
The query is the shipped training query (``include/sql/tpch_orders/training.sql``) over
``[--start, --end)``: at sf1 over all dates, 1,500,000 rows. ``--profile METHOD`` runs one more
worker of that method under a sampling profiler (every thread) and prints where time goes.
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "plugins"))
sys.path.insert(0, str(ROOT))

METHODS = ("ours", "provider", "raw_fetch", "client_fetch")
# (ratio name, numerator, denominator, metric, goal, "ge"/"le")
GOALS = (
    ("throughput ours / provider", "ours", "provider", "rows_per_second", 1.1, "ge"),
    ("throughput ours / raw_fetch", "ours", "raw_fetch", "rows_per_second", 0.95, "ge"),
    ("RSS above imports ours / provider", "ours", "provider", "rss_above_imports_mb", 1 / 8, "le"),
    ("peak RSS ours / provider", "ours", "provider", "peak_rss_mb", None, "le"),
)


def render_sql(schema: str, start: str, end: str) -> str:
    """The shipped training query for ``tpch.<schema>`` over ``[start, end)``, comments dropped."""
    sql = (ROOT / "include/sql/tpch_orders/training.sql").read_text()
    sql = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return (
        sql.replace("{{ source.catalog }}", "tpch")
        .replace("{{ source.schema }}", schema)
        .replace("{{ window_start(data_interval_end) }}", start)
        .replace("{{ data_interval_end | ds }}", end)
    )


# -- worker side (one method, in its own process) ----------------------------------------------


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


def _presto_cursor() -> Any:
    from airflow.providers.presto.hooks.presto import PrestoHook

    return PrestoHook(presto_conn_id="presto_default").get_conn().cursor()


def _drain(cursor: Any, chunk_rows: int) -> int:
    rows = 0
    while batch := cursor.fetchmany(chunk_rows):
        rows += len(batch)
    return rows


def _run_ours(sql: str, bucket: str, chunk_rows: int) -> int:
    from mlops_sagemaker.extract import extract_to_s3

    manifest = extract_to_s3(
        sql=sql,
        presto_conn_id="presto_default",
        aws_conn_id="aws_default",
        bucket=bucket,
        prefix="bench/compare/ours",
        chunk_rows=chunk_rows,
    )
    return manifest["row_count"]


def _run_provider(sql: str, bucket: str, chunk_rows: int) -> None:
    from airflow.providers.amazon.aws.transfers.sql_to_s3 import SqlToS3Operator

    SqlToS3Operator(
        task_id="provider",
        query=sql,
        s3_bucket=bucket,
        s3_key="bench/compare/provider/data.parquet",
        sql_conn_id="presto_default",
        aws_conn_id="aws_default",
        file_format="parquet",
        replace=True,
    ).execute(context={})


def _provider_rows(bucket: str) -> int:
    """Rows of the provider's Parquet file (read after its peak RSS was taken)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    body = S3Hook(aws_conn_id="aws_default").get_key(
        "bench/compare/provider/data.parquet", bucket_name=bucket
    )
    return pq.ParquetFile(pa.BufferReader(body.get()["Body"].read())).metadata.num_rows


def _run_raw_fetch(sql: str, bucket: str, chunk_rows: int) -> int:
    from mlops_sagemaker.extract import start_streaming_query

    cursor = _presto_cursor()
    start_streaming_query(cursor, sql)
    return _drain(cursor, chunk_rows)


def _run_client_fetch(sql: str, bucket: str, chunk_rows: int) -> int:
    cursor = _presto_cursor()
    cursor.execute(sql)
    return _drain(cursor, chunk_rows)


RUNNERS: dict[str, Callable[[str, str, int], int | None]] = {
    "ours": _run_ours,
    "provider": _run_provider,
    "raw_fetch": _run_raw_fetch,
    "client_fetch": _run_client_fetch,
}


def _import_all() -> None:
    """The modules any method needs, imported by every worker before its baseline RSS."""
    import airflow.providers.amazon.aws.hooks.s3
    import airflow.providers.amazon.aws.transfers.sql_to_s3
    import airflow.providers.presto.hooks.presto  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import mlops_sagemaker.extract  # noqa: F401


def worker(method: str, sql: str, bucket: str, chunk_rows: int, profile: bool) -> dict[str, Any]:
    """Run one method once in this process; return rows, seconds and RSS figures."""
    _import_all()
    imports_mb = _rss_mb()
    sampler = _Sampler() if profile else None
    if sampler:
        sampler.start()
    started, cpu_started = time.perf_counter(), _cpu_s()
    rows = RUNNERS[method](sql, bucket, chunk_rows)
    seconds, cpu_s = time.perf_counter() - started, _cpu_s() - cpu_started
    peak_mb = _rss_mb()  # before anything else this process does (the provider's row count)
    result: dict[str, Any] = {
        "method": method,
        "rows": _provider_rows(bucket) if rows is None else rows,
        "seconds": seconds,
        "cpu_s": cpu_s,
        "rows_per_second": 0.0,
        "peak_rss_mb": peak_mb,
        "imports_rss_mb": imports_mb,
        "rss_above_imports_mb": peak_mb - imports_mb,
    }
    result["rows_per_second"] = result["rows"] / seconds
    if sampler:
        result["profile"] = sampler.stop()
    return result


class _Sampler:
    """A sampling profiler over every thread (``sys._current_frames``): py-spy is not here,
    and cProfile sees only the thread it runs in and slows pure-Python code unevenly. Rough:
    the sampler needs the GIL, so samples favour places where a thread releases it (I/O)."""

    def __init__(self, interval: float = 0.005) -> None:
        import threading

        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._self: dict[str, int] = {}
        self._inclusive: dict[str, int] = {}
        self._samples = 0

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        import threading

        own = threading.get_ident()
        names = {}
        while not self._stop.wait(self._interval):
            names.update({t.ident: t.name for t in threading.enumerate()})
            for ident, frame in sys._current_frames().items():
                if ident == own:
                    continue
                self._samples += 1
                thread = names.get(ident, str(ident))
                leaf = f"[{thread}] {_where(frame)}"
                self._self[leaf] = self._self.get(leaf, 0) + 1
                seen = set()
                while frame is not None:
                    key = f"[{thread}] {_where(frame)}"
                    if key not in seen:
                        seen.add(key)
                        self._inclusive[key] = self._inclusive.get(key, 0) + 1
                    frame = frame.f_back

    def stop(self, top: int = 25) -> dict[str, Any]:
        self._stop.set()
        self._thread.join()

        def ranked(counts: dict[str, int]) -> list[tuple[str, float]]:
            best = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
            return [(k, round(v * self._interval, 2)) for k, v in best]

        return {
            "interval_s": self._interval,
            "self_seconds": ranked(self._self),
            "inclusive_seconds": ranked(self._inclusive),
        }


def _where(frame: Any) -> str:
    code = frame.f_code
    path = code.co_filename.replace(str(ROOT) + "/", "").split("site-packages/")[-1]
    return f"{code.co_name} ({path}:{frame.f_lineno if code.co_name == '<module>' else code.co_firstlineno})"


# -- driver side ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _service_cpu() -> dict[str, float]:
    """CPU seconds used so far by the stack's Presto stand-in and AWS endpoint processes."""
    import psutil

    cpu = {"presto": 0.0, "aws": 0.0}
    for child in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(child.cmdline())
            times = child.cpu_times()
        except psutil.Error:
            continue
        for name, marker in (("presto", "presto_standin"), ("aws", "aws_endpoint")):
            if marker in cmdline:
                cpu[name] += times.user + times.system
    return cpu


def _spawn_worker(
    method: str, sql: str, bucket: str, chunk_rows: int, env: dict[str, str], profile: bool
) -> dict[str, Any]:
    before = _service_cpu()
    argv = [sys.executable, __file__, "--worker", method, "--bucket", bucket]
    argv += ["--chunk-rows", str(chunk_rows), "--sql", sql, *(["--profile-worker"] * profile)]
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{method} worker failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    after = _service_cpu()
    result.update({f"{k}_cpu_s": after[k] - before[k] for k in after})
    return result


def _warm(sql: str, bucket: str, env: dict[str, str]) -> None:
    """Run the query once with ``LIMIT 1`` (untimed) so the schema exists before the first run."""
    _spawn_worker("raw_fetch", f"{sql}\nLIMIT 1", bucket, 1, env, False)


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def summarize(results: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    """Per-method medians and the goal ratios (computed on the medians)."""
    keys = ("seconds", "rows_per_second", "peak_rss_mb", "rss_above_imports_mb")
    keys += ("cpu_s", "presto_cpu_s", "aws_cpu_s")
    medians = {}
    for method in methods:
        runs = [r for r in results if r["method"] == method]
        medians[method] = {k: _median(runs, k) for k in keys}
        medians[method]["rows"] = sorted({r["rows"] for r in runs})
        medians[method]["runs_seconds"] = [round(r["seconds"], 2) for r in runs]
    ratios = []
    for name, num, den, key, goal, sense in GOALS:
        if num in medians and den in medians:
            value = medians[num][key] / medians[den][key]
            met = None if goal is None else (value >= goal if sense == "ge" else value <= goal)
            ratios.append({"ratio": name, "value": value, "goal": goal, "sense": sense, "met": met})
    return {"medians": medians, "ratios": ratios}


def _print_summary(summary: dict[str, Any], rounds: int) -> None:
    print(f"\nmedians of {rounds} interleaved round(s):")
    head = f"{'method':<13}{'rows':>10}{'seconds':>9}{'rows/s':>10}{'peak MB':>9}"
    print(head + f"{'>imports MB':>12}{'own CPU':>8}{'presto CPU':>11}{'s3 CPU':>8}  runs (s)")
    for method, m in summary["medians"].items():
        rows = ",".join(str(r) for r in m["rows"])
        print(
            f"{method:<13}{rows:>10}{m['seconds']:>9.2f}{m['rows_per_second']:>10.0f}"
            f"{m['peak_rss_mb']:>9.0f}{m['rss_above_imports_mb']:>12.0f}{m['cpu_s']:>8.1f}"
            f"{m['presto_cpu_s']:>11.1f}{m['aws_cpu_s']:>8.1f}  {m['runs_seconds']}"
        )
    print("\nratios (of the medians):")
    for r in summary["ratios"]:
        goal = "" if r["goal"] is None else f"goal {'>=' if r['sense'] == 'ge' else '<='} "
        goal += "" if r["goal"] is None else f"{r['goal']:.3f}: {'met' if r['met'] else 'NOT met'}"
        print(f"  {r['ratio']:<36}{r['value']:>7.3f}   {goal}")


def _print_profile(profile: dict[str, Any]) -> None:
    for title, key in (("self", "self_seconds"), ("inclusive", "inclusive_seconds")):
        print(f"\nprofile, {title} seconds (sampled every {profile['interval_s']} s):")
        for where, seconds in profile[key]:
            print(f"  {seconds:8.2f}  {where}")


def run_rounds(args: argparse.Namespace, methods: list[str]) -> dict[str, Any]:
    """Start one stack, warm it, run every method ``args.rounds`` times interleaved."""
    from local_stack.stack import LocalStack

    sql = render_sql(args.schema, args.start, args.end)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as home:
        stack = LocalStack(
            presto_port=_free_port(), aws_port=_free_port(), home=Path(home),
            presto_schemas="tiny,sf1",
        )  # fmt: skip
        with stack:
            env = stack.airflow_env()
            _warm(sql, stack.bucket, env)
            for round_index in range(args.rounds):
                shift = round_index % len(methods)
                for method in methods[shift:] + methods[:shift]:
                    result = _spawn_worker(method, sql, stack.bucket, args.chunk_rows, env, False)
                    results.append(result)
                    print(
                        f"round {round_index + 1} {method:<13} {result['rows']:>9} rows "
                        f"{result['seconds']:6.2f} s  peak {result['peak_rss_mb']:5.0f} MB "
                        f"(+{result['rss_above_imports_mb']:.0f})  CPU {result['cpu_s']:.1f} s, "
                        f"presto CPU {result['presto_cpu_s']:.1f} s",
                        flush=True,
                    )
            profile = None
            if args.profile:
                profiled = _spawn_worker(
                    args.profile, sql, stack.bucket, args.chunk_rows, env, True
                )
                profile = {"method": args.profile, "seconds": profiled["seconds"]}
                profile.update(profiled["profile"])
    return {"results": results, "summary": summarize(results, methods), "profile": profile}


def main() -> None:
    """Parse arguments; run as the driver, or as one method's worker (``--worker``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--schema", default="sf1", choices=["tiny", "sf1"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--start", default="1992-01-01", help="first order date (inclusive)")
    parser.add_argument("--end", default="1998-12-31", help="last order date (exclusive)")
    parser.add_argument("--chunk-rows", type=int, default=50_000)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--profile", choices=METHODS, help="also profile one run of METHOD")
    parser.add_argument("--json", type=Path, help="write every run and the summary here")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--bucket", help=argparse.SUPPRESS)
    parser.add_argument("--sql", help=argparse.SUPPRESS)
    parser.add_argument("--profile-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = worker(args.worker, args.sql, args.bucket, args.chunk_rows, args.profile_worker)
        print(json.dumps(result))
        return
    methods = [m for m in args.methods.split(",") if m]
    if unknown := sorted(set(methods) - set(METHODS)):
        parser.error(f"unknown methods {unknown}: use {', '.join(METHODS)}")
    print(f"schema {args.schema}, orders dated [{args.start}, {args.end}), {args.rounds} round(s)")
    report = run_rounds(args, methods)
    _print_summary(report["summary"], args.rounds)
    if report["profile"]:
        print(f"\nprofiled {report['profile']['method']}: {report['profile']['seconds']:.2f} s")
        _print_profile(report["profile"])
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
