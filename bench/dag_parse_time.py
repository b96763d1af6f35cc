"""Benchmark: how long the DAG files take to parse, per file and as the use cases grow.

Usage: ``.venv/bin/python bench/dag_parse_time.py [--repeat 5] [--scale 20]``.

Without ``--scale``: each sample runs a fresh interpreter that imports Airflow and the SageMaker
operators first (not counted), then times a ``DagBag`` fill of one file of ``dags/`` with the
shipped configs. Prints min / median / max per file.

With ``--scale N``: does what the DAG processor does for each file — in a fresh interpreter with
Airflow core imported (not counted), its ``_parse_file``: the ``DagBag`` fill plus the
serialization of every DAG — for

* every file of ``dags/`` with 1 generated use case and with N (copies of
  ``include/config/tpch_orders.yaml`` with their own names and SQL folders, in a temporary
  ``include/`` the DAG files read through ``MLOPS_INCLUDE_DIR``);
* per file of ``dags/``, a minimal DAG file importing the same operator, sensor, hook and trigger
  modules as ours (found by a first, untimed probe parse) and defining one trivial DAG.

Samples of all the variants are interleaved, round by round (the machine's load drifts). Prints
the medians of wall-clock and CPU time, N use cases against 1 (goal: at most 3x) and each file
against its minimal twin (goal: at most 1.2x). Every timed parse runs with ``socket`` connect and name resolution
replaced by functions raising (and counting the attempts): any network use fails the parse and
the benchmark. Neither the samples nor the minimal files get the DAG processor's pre-import of a
file's ``airflow.*`` imports, so both pay for the provider modules they import (the goal's
comparison). The "as deployed" lines time the same files after that pre-import (untimed, as the
DAG processor's manager does it once): what a parse costs in a running DAG processor.

The samples write byte code under ``.local/bench-pycache`` (``PYTHONPYCACHEPREFIX``), even
when ``PYTHONDONTWRITEBYTECODE`` is set: a deployed Airflow has its byte code cached, and
compiling every module again would dwarf what is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "include" / "config" / "tpch_orders.yaml"
SCALE_GOAL = 3.0
MINIMAL_GOAL = 1.2

DAGBAG_SAMPLE = r"""
import json, sys, time
import airflow.sdk, airflow.providers.amazon.aws.operators.sagemaker  # warm, not timed
from airflow.dag_processing.dagbag import DagBag
t = time.perf_counter()
bag = DagBag(sys.argv[1])
elapsed = time.perf_counter() - t
assert not bag.import_errors, bag.import_errors
print(json.dumps({"seconds": elapsed, "dags": len(bag.dags)}))
"""

# argv: DAG file, then "probe" to list the provider modules the parse imported, or "deployed"
# to pre-import the file's airflow imports first, untimed, as the DAG processor's manager does.
PROCESSOR_SAMPLE = r"""
import json, socket, sys, time
from pathlib import Path
import structlog
from airflow.dag_processing.processor import (  # warm, not timed
    DagFileParseRequest, _parse_file, _pre_import_airflow_modules,
)
if sys.argv[2:] == ["deployed"]:
    _pre_import_airflow_modules(sys.argv[1], structlog.get_logger())
attempts = []
def refuse(*args, **kwargs):
    attempts.append(repr(args)[:200])
    raise OSError("network access while parsing a DAG file")
for name in ("connect", "connect_ex"):
    setattr(socket.socket, name, refuse)
for name in ("create_connection", "getaddrinfo", "gethostbyname", "gethostbyname_ex"):
    setattr(socket, name, refuse)
path = Path(sys.argv[1])
request = DagFileParseRequest(file=str(path), bundle_path=path.parent, bundle_name="bench")
before = set(sys.modules)
wall, cpu = time.perf_counter(), time.process_time()
result = _parse_file(request, structlog.get_logger())
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
kinds = (".operators.", ".sensors.", ".hooks.", ".triggers.", ".decorators.", ".notifications.")
imported = sorted(
    m for m in set(sys.modules) - before
    if m.startswith("airflow.providers.") and any(k in m for k in kinds)
)
print(json.dumps({
    "seconds": wall,
    "cpu_seconds": cpu,
    "dags": len(result.serialized_dags),
    "errors": {str(k): str(v)[-2000:] for k, v in result.import_errors.items()},
    "sockets": attempts,
    "modules": imported if sys.argv[2:] == ["probe"] else [],
}))
"""

MINIMAL_DAG = '''"""Minimal DAG file: the provider modules {name} imports, and one trivial DAG."""

{imports}
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG

with DAG("minimal_{stem}", schedule=None):
    EmptyOperator(task_id="noop")
'''


def sample_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a sample: this package importable, our plugins, cached byte code."""
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'plugins'}{os.pathsep}{ROOT}",
        "PYTHONPYCACHEPREFIX": str(ROOT / ".local" / "bench-pycache"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        # The serializer looks our timetable up among the plugins' timetables.
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW_HOME": str(ROOT / ".local" / "bench-airflow"),
        **(extra or {}),
    }
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run_sample(script: str, args: list[str], env: dict[str, str]) -> dict:
    """Run one sample in a fresh interpreter; its last stdout line is its JSON result."""
    out = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=env, capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"sample {args} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_use_cases(include: Path, count: int) -> list[str]:
    """Write ``count`` copies of the shipped use case into ``include`` (``config/``, ``sql/``,
    ``step_code/``), each with its own names; return the use-case names."""
    template = TEMPLATE.read_text()
    (include / "config").mkdir(parents=True)
    shutil.copytree(ROOT / "include" / "step_code", include / "step_code")
    names = []
    for i in range(count):
        name = f"bench{i:02d}_orders"
        replacements = {
            "use_case: tpch_orders": f"use_case: {name}",
            "short_name: tpch-ord": f"short_name: bench{i:02d}",
            "use-case: tpch_orders": f"use-case: {name}",
            "model_package_group: tpch-orders-late-delivery": f"model_package_group: bench{i:02d}",
        }
        text = template
        for old, new in replacements.items():
            if old not in text:  # the template changed: fix the replacements, keep names distinct
                raise ValueError(f"{TEMPLATE}: no {old!r} to replace")
            text = text.replace(old, new)
        (include / "config" / f"{name}.yaml").write_text(text)
        shutil.copytree(ROOT / "include" / "sql" / "tpch_orders", include / "sql" / name)
        names.append(name)
    return names


def write_minimal(folder: Path, dag_file: Path, modules: list[str]) -> Path:
    """A minimal DAG file importing ``modules`` (what ``dag_file`` imported) in ``folder``."""
    imports = "\n".join(f"import {m}  # noqa: F401" for m in modules)
    path = folder / f"minimal_{dag_file.name}"
    path.write_text(MINIMAL_DAG.format(name=dag_file.name, stem=dag_file.stem, imports=imports))
    return path


def per_file_table(repeat: int) -> None:
    """Time the ``DagBag`` fill of every DAG file with the shipped configs and print a table."""
    env = sample_env()
    print(f"{'DAG file':32} {'dags':>4} {'min s':>7} {'median s':>9} {'max s':>7}")
    for path in sorted((ROOT / "dags").glob("*.py")):
        run_sample(DAGBAG_SAMPLE, [str(path)], env)  # byte code, disk cache: not counted
        samples, dags = [], 0
        for _ in range(repeat):
            result = run_sample(DAGBAG_SAMPLE, [str(path)], env)
            samples.append(result["seconds"])
            dags = result["dags"]
        print(
            f"{path.name:32} {dags:>4} {min(samples):7.3f} "
            f"{statistics.median(samples):9.3f} {max(samples):7.3f}"
        )


def _checked(result: dict, label: str) -> dict:
    """``result`` of a processor sample, or ``RuntimeError`` on an import error or a socket."""
    if result["errors"] or result["sockets"]:
        raise RuntimeError(f"{label}: errors {result['errors']}, network {result['sockets']}")
    return result


def scale_samples(tmp: Path, count: int, repeat: int) -> tuple[dict[tuple, list], dict]:
    """Interleaved processor samples of every variant, ``(kind, file name) -> [(wall, cpu)]``
    (kinds ``1``, ``N``, ``minimal``, and ``deployed`` / ``minimal deployed``: the same files after
    the processor's pre-import), and the DAG count of each variant."""
    dag_files = sorted((ROOT / "dags").glob("*.py"))
    envs = {}
    for kind, n in (("1", 1), ("N", count)):
        write_use_cases(tmp / f"include_{kind}", n)
        envs[kind] = sample_env({"MLOPS_INCLUDE_DIR": str(tmp / f"include_{kind}")})
    minimal_dir = tmp / "minimal"
    minimal_dir.mkdir()
    variants: list[tuple[str, Path]] = []
    for path in dag_files:
        probe = _checked(run_sample(PROCESSOR_SAMPLE, [str(path), "probe"], envs["1"]), path.name)
        minimal = write_minimal(minimal_dir, path, probe["modules"])
        variants += [("1", path), ("N", path), ("minimal", minimal)]
        variants += [("deployed", path), ("minimal deployed", minimal)]
    envs["minimal"] = envs["deployed"] = envs["minimal deployed"] = envs["1"]
    samples: dict[tuple, list] = {(kind, path.name): [] for kind, path in variants}
    dags: dict[tuple, int] = {}
    for round_ in range(repeat + 1):  # round 0 warms the disk and byte-code caches
        shift = round_ % len(variants)  # rotate the order: no variant always runs first
        for kind, path in variants[shift:] + variants[:shift]:
            label = f"{kind}:{path.name}"
            mode = ["deployed"] if kind.endswith("deployed") else []
            result = _checked(run_sample(PROCESSOR_SAMPLE, [str(path), *mode], envs[kind]), label)
            dags[(kind, path.name)] = result["dags"]
            if round_:
                samples[(kind, path.name)].append((result["seconds"], result["cpu_seconds"]))
    return samples, dags


def _verdict(ratio: float, goal: float) -> str:
    return f"{ratio:.2f}x (goal <= {goal}x: {'met' if ratio <= goal else 'NOT met'})"


def scale_report(count: int, repeat: int) -> None:
    """Print the scale and minimal-file comparison of ``--scale`` (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="dag-parse-") as tmp:
        samples, dags = scale_samples(Path(tmp), count, repeat)
    # Wall clock is what the DAG processor waits for; CPU time is what the parse costs, and it
    # barely moves when other processes compete for the cores.
    median = {
        (metric, *key): statistics.median(pair[i] for pair in values)
        for key, values in samples.items()
        for i, metric in enumerate(("wall", "cpu"))
    }
    ours = sorted({name for kind, name in samples if not kind.startswith("minimal")})
    print(f"processor parse: median of {repeat} fresh-process samples, wall / CPU seconds")
    print(f"{'DAG file':28} {'1 use case':>20} {f'{count} use cases':>21} {'minimal':>15}")
    for name in ours:
        cells = [
            f"{median[('wall', kind, key)]:6.3f} / {median[('cpu', kind, key)]:5.3f}"
            for kind, key in (("1", name), ("N", name), ("minimal", f"minimal_{name}"))
        ]
        print(
            f"{name:28} {cells[0]} ({dags[('1', name)]:>2}) {cells[1]} ({dags[('N', name)]:>3})"
            f" {cells[2]}"
        )
    for metric in ("wall", "cpu"):
        one = sum(median[(metric, "1", name)] for name in ours)
        many = sum(median[(metric, "N", name)] for name in ours)
        print(f"{metric}: all files, 1 use case {one:.3f} s, {count} use cases {many:.3f} s:")
        print(f"  {count} / 1 use cases {_verdict(many / one, SCALE_GOAL)}")
        for name in ours:
            ratio = median[(metric, "1", name)] / median[(metric, "minimal", f"minimal_{name}")]
            print(f"  {name} / its minimal file {_verdict(ratio, MINIMAL_GOAL)}")
    print("as deployed (the processor pre-imports each file's airflow imports once, untimed):")
    for name in ours:
        before, after = median[("cpu", "1", name)], median[("cpu", "deployed", name)]
        minimal = median[("cpu", "minimal deployed", f"minimal_{name}")]
        print(
            f"  {name}: CPU per parse {after:.3f} s (without pre-import {before:.3f} s, "
            f"{before / after:.1f}x more); its minimal file {minimal:.3f} s"
        )
    parses = sum(len(values) for values in samples.values()) + len(samples) + len(ours)
    print(f"network: socket connect and name resolution blocked in all {parses} parses: 0 attempts")


def main() -> None:
    """Per-file table, or with ``--scale`` the 1-vs-N and minimal-file comparison."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--scale", type=int, metavar="N", help="compare 1 and N use cases")
    args = parser.parse_args()
    if args.scale:
        scale_report(args.scale, args.repeat)
    else:
        per_file_table(args.repeat)


if __name__ == "__main__":
    main()
