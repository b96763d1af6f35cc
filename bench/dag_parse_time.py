"""Benchmark: how long each DAG file takes to parse (cold interpreter, repeated).

Usage: ``.venv/bin/python bench/dag_parse_time.py [--repeat 5]``. Each sample runs a fresh
interpreter that imports Airflow first (not counted), then times a ``DagBag`` fill of one file —
what the DAG processor pays per file. Prints min / median / max per file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = r"""
import json, sys, time
import airflow.sdk, airflow.providers.amazon.aws.operators.sagemaker  # warm, not timed
from airflow.dag_processing.dagbag import DagBag
t = time.perf_counter()
bag = DagBag(sys.argv[1])
elapsed = time.perf_counter() - t
assert not bag.import_errors, bag.import_errors
print(json.dumps({"seconds": elapsed, "dags": len(bag.dags)}))
"""


def main() -> None:
    """Time every DAG file and print a table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'plugins'}{os.pathsep}{ROOT}",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW_HOME": str(ROOT / ".local" / "bench-airflow"),
    }
    print(f"{'DAG file':32} {'dags':>4} {'min s':>7} {'median s':>9} {'max s':>7}")
    for path in sorted((ROOT / "dags").glob("*.py")):
        samples, dags = [], 0
        for _ in range(args.repeat):
            out = subprocess.run(
                [sys.executable, "-c", SAMPLE, str(path)],
                env=env, capture_output=True, text=True, check=True,
            )  # fmt: skip
            result = json.loads(out.stdout.strip().splitlines()[-1])
            samples.append(result["seconds"])
            dags = result["dags"]
        print(
            f"{path.name:32} {dags:>4} {min(samples):7.3f} "
            f"{statistics.median(samples):9.3f} {max(samples):7.3f}"
        )


if __name__ == "__main__":
    main()
