"""Every DAG file imports cleanly, offline, without heavy imports, and carries its UI metadata."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Parsed in a fresh interpreter so that sys.modules and the socket guard are the DAG files' own.
PARSE_SCRIPT = r"""
import json, socket, sys
attempts = []
def refuse(*args, **kwargs):
    attempts.append(repr(args)[:200])
    raise OSError("network access during DAG parsing")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(sys.argv[1])
dags = {
    dag_id: {
        "tasks": [t.task_id for t in dag.tasks],
        "tags": sorted(dag.tags),
        "doc_md": bool(dag.doc_md),
        "retries": {t.task_id: t.retries for t in dag.tasks},
        "params": sorted(dag.params.keys()),
        "owner": dag.owner,
        "description": dag.description,
        "doc": dag.doc_md or "",
        "top_level": list(dag.task_group.children),
        "upstream": {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks},
        "pools": {t.task_id: [t.pool, t.pool_slots] for t in dag.tasks},
    }
    for dag_id, dag in bag.dags.items()
}
print(json.dumps({
    "errors": {k: str(v) for k, v in bag.import_errors.items()},
    "dags": dags,
    "sockets": attempts,
    "heavy": sorted(m for m in ("sagemaker", "sklearn", "prestodb", "pyarrow") if m in sys.modules),
}))
"""


def run_script(script: str, path: Path, extra_env: dict[str, str] | None = None) -> Any:
    """Run ``script`` on ``path`` in a fresh interpreter with the package importable; the JSON
    of its last stdout line (an AssertionError with its stderr if it fails)."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'plugins'}{os.pathsep}{ROOT}", **(extra_env or {})}
    out = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def parse_dags(dags_dir: Path, extra_env: dict[str, str] | None = None) -> dict:
    """Parse ``dags_dir`` with a DagBag in a subprocess with sockets blocked."""
    return run_script(PARSE_SCRIPT, dags_dir, extra_env)


@pytest.fixture(scope="module")
def parsed() -> dict:
    return parse_dags(ROOT / "dags")


def test_dag_files_import_without_errors_or_network(parsed: dict) -> None:
    assert parsed["errors"] == {}
    assert parsed["sockets"] == [], "a DAG file opened a socket while being parsed"
    assert parsed["dags"], "no DAG found"


def test_no_heavy_imports_at_parse_time(parsed: dict) -> None:
    assert parsed["heavy"] == []


# As the DAG processor runs a file: its manager pre-imports the file's own ``airflow.*`` imports
# (``_pre_import_airflow_modules``, in the long-lived manager), then a parser process parses it.
# A trivial DAG parsed first loads the processor's own machinery, as earlier parses would have.
PRE_IMPORT_SCRIPT = r"""
import json, sys, tempfile
from pathlib import Path
import structlog
from airflow.dag_processing.processor import (
    DagFileParseRequest, _parse_file, _pre_import_airflow_modules,
)
log = structlog.get_logger()
def parse(path):
    request = DagFileParseRequest(file=str(path), bundle_path=path.parent, bundle_name="test")
    result = _parse_file(request, log)
    assert not result.import_errors, result.import_errors
with tempfile.TemporaryDirectory() as tmp:
    trivial = Path(tmp) / "trivial.py"
    trivial.write_text(
        "from airflow.sdk import DAG\n"
        "from airflow.providers.standard.operators.empty import EmptyOperator\n"
        "with DAG('trivial', schedule=None):\n"
        "    EmptyOperator(task_id='noop')\n"
    )
    parse(trivial)
path = Path(sys.argv[1])
_pre_import_airflow_modules(str(path), log)
before = set(sys.modules)
parse(path)
print(json.dumps(sorted(m for m in set(sys.modules) - before if m.startswith("airflow."))))
"""


@pytest.mark.parametrize("dag_file", sorted(p.name for p in (ROOT / "dags").glob("*.py")))
def test_the_dag_processor_pre_imports_every_airflow_module_a_parse_needs(
    dag_file: str, tmp_path: Path
) -> None:
    # Our package's imports are invisible to the processor's pre-import: a module missing from
    # the DAG file's list would be imported again by every parser process (about 135 ms of CPU
    # per file and parse for the provider modules, bench/dag_parse_time.py).
    env = {"AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"), "AIRFLOW_HOME": str(tmp_path)}
    late = run_script(PRE_IMPORT_SCRIPT, ROOT / "dags" / dag_file, env)
    assert late == [], f"{dag_file} should import these for the DAG processor: {late}"


def test_training_dag_shape_and_ui_metadata(parsed: dict) -> None:
    dag = parsed["dags"]["mlops_tpch_orders_training"]
    assert dag["tags"] == ["mlops", "tpch_orders", "training"]
    assert dag["doc_md"]
    assert dag["owner"] == "data-engineering"
    assert {"evaluation_threshold", "sagemaker_check_interval_seconds"} <= set(dag["params"])
    expected = [
        "check_run_date", "wait_for_data", "extract", "stage_code", "split.plan", "split.job",
        "tune.plan", "tune.job", "tune.best_model", "evaluate.plan", "evaluate.job",
        "quality_gate", "register.plan", "register.version", "register.announce",
    ]  # fmt: skip
    assert sorted(dag["tasks"]) == sorted(expected)
    assert dag["retries"]["extract"] == 2
    assert dag["retries"]["quality_gate"] == 0, "a failed gate must not be retried"
    # The graph reads like the pipeline: only the steps are top-level nodes.
    assert dag["top_level"] == [
        "check_run_date", "wait_for_data", "extract", "stage_code", "split", "tune", "evaluate",
        "quality_gate", "register",
    ]  # fmt: skip


def test_sagemaker_job_tasks_share_the_use_cases_pool(parsed: dict) -> None:
    training = parsed["dags"]["mlops_tpch_orders_training"]["pools"]
    batch = parsed["dags"]["mlops_tpch_orders_batch_inference"]["pools"]
    jobs = {"split.job": 1, "tune.job": 2, "evaluate.job": 1}  # tuning: max_parallel_jobs
    assert {t: training[t] for t in jobs} == {t: ["mlops_tpch_orders", n] for t, n in jobs.items()}
    assert batch["transform.job"] == ["mlops_tpch_orders", 1]
    others = {t for t, (pool, _) in {**training, **batch}.items() if pool == "mlops_tpch_orders"}
    assert others == {*jobs, "transform.job"}, "only SageMaker job tasks take the pool's slots"


def test_batch_inference_dag_shape_and_ui_metadata(parsed: dict) -> None:
    dag = parsed["dags"]["mlops_tpch_orders_batch_inference"]
    assert dag["tags"] == ["batch_inference", "mlops", "tpch_orders"]
    assert dag["doc_md"]
    assert {"model_selection", "pinned_version"} <= set(dag["params"])
    assert dag["top_level"] == [
        "check_run_date", "wait_for_data", "extract", "select_model", "approve", "model",
        "transform", "check", "drift",
    ]  # fmt: skip
    assert {"approve.auto", "approve.version", "transform.plan", "transform.job"} <= set(
        dag["tasks"]
    )
    assert dag["retries"]["check"] == 0, "a failed output check must not be retried"


def test_endpoint_dag_reads_like_the_deployment(parsed: dict) -> None:
    dag = parsed["dags"]["mlops_tpch_orders_endpoint"]
    assert dag["tags"] == ["endpoint", "mlops", "tpch_orders"]
    assert dag["doc_md"] and "model_version" in dag["params"]
    assert dag["top_level"] == ["version", "model", "staging", "production", "cleanup"]
    steps = ["plan", "configure", "deploy", "wait", "scale", "smoke"]
    assert [t for t in dag["tasks"] if t.startswith("staging.")] == [f"staging.{s}" for s in steps]
    assert [t for t in dag["tasks"] if t.startswith("production.")] == [
        "production.approve",
        *[f"production.{s}" for s in steps],
    ]
    upstream = dag["upstream"]
    assert upstream["production.approve"] == ["staging.smoke"], "production after staging passed"
    assert upstream["production.plan"] == ["model", "production.approve", "version"]
    assert dag["retries"]["staging.smoke"] == 0, "a failed smoke test rolls back, never retries"
    teardown = parsed["dags"]["mlops_tpch_orders_endpoint_teardown"]
    assert teardown["params"] == ["stage"] and teardown["tasks"] == ["teardown", "cleanup"]


def test_approval_queue_adds_an_sqs_asset_watcher(tmp_path: Path) -> None:
    url = "https://sqs.eu-west-1.amazonaws.com/123456789012/tpch-ord-approvals"
    config = SHIPPED.replace(
        "  # approval_events_queue_url: https", f"  approval_events_queue_url: {url}\n  # https"
    )
    assert url in config
    include = _include_with(tmp_path, {"tpch_orders.yaml": config})
    script = PARSE_SCRIPT.replace(
        '"upstream": {',
        '"watchers": [(a.name, [type(w.trigger).__name__ for w in a.watchers]) for a in '
        'getattr(getattr(dag.timetable, "asset_condition", None), "objects", [])],\n'
        '        "upstream": {',
    )
    parsed = run_script(script, ROOT / "dags", {"MLOPS_INCLUDE_DIR": str(include)})
    assert parsed["sockets"] == [] and parsed["errors"] == {}
    watchers = dict(map(tuple, parsed["dags"]["mlops_tpch_orders_endpoint"]["watchers"]))
    assert watchers == {
        "mlops.tpch_orders.approved_versions": [],
        "mlops.tpch_orders.registry_approvals": ["SqsSensorTrigger"],
    }


@pytest.mark.parametrize("mode", ["none", "auto", "airflow", "registry"])
def test_each_approval_mode_builds_its_approve_group(tmp_path: Path, mode: str) -> None:
    config = SHIPPED.replace("    mode: auto  ", f"    mode: {mode}  ")
    assert f"mode: {mode}" in config
    include = _include_with(tmp_path, {"tpch_orders.yaml": config})
    parsed = parse_dags(ROOT / "dags", {"MLOPS_INCLUDE_DIR": str(include)})
    tasks = parsed["dags"]["mlops_tpch_orders_batch_inference"]["tasks"]
    approve = sorted(t for t in tasks if t.startswith("approve."))
    steps = {
        "none": [],
        "auto": ["approve.auto", "approve.announce"],
        "airflow": ["approve.ask", "approve.announce"],
    }
    assert approve == sorted([*steps.get(mode, ["approve.wait"]), "approve.version"])
    upstream = parsed["dags"]["mlops_tpch_orders_batch_inference"]["upstream"]
    for step in approve:  # each reads the choice from XCom: it must run after select_model
        if step != "approve.announce":
            assert "select_model" in upstream[step], step
    if len(steps.get(mode, [])) == 2:  # announce reads what the approval step pushed
        assert upstream["approve.announce"] == [steps[mode][0]]


def test_retrain_on_assets_adds_a_dispatcher_and_cron_null_drops_the_time_schedule(
    tmp_path: Path,
) -> None:
    config = SHIPPED.replace(
        '    cron: "@daily"\n    start_date: 1993-01-01      # TPC-H',
        "    cron: null\n    start_date: 1993-01-01      # TPC-H",
    ).replace(
        "  query: training.sql\n",
        "  query: training.sql\n  retrain_on:\n    assets: [{name: etl.tpch.orders}]\n"
        "    drift: true\n",
    )
    assert "retrain_on" in config and "cron: null" in config
    include = _include_with(tmp_path, {"tpch_orders.yaml": config})
    script = PARSE_SCRIPT.replace(
        '"upstream": {',
        '"schedule": type(dag.timetable).__name__, '
        '"assets": sorted(str(getattr(a, "name", a)) for a in '
        'getattr(getattr(dag.timetable, "asset_condition", None), "objects", [])),\n'
        '        "upstream": {',
    )
    parsed = run_script(script, ROOT / "dags", {"MLOPS_INCLUDE_DIR": str(include)})
    assert parsed["errors"] == {} and parsed["sockets"] == []
    retrain = parsed["dags"]["mlops_tpch_orders_retrain"]
    assert retrain["tasks"] == ["run_date", "train"]
    assert retrain["schedule"] == "AssetTriggeredTimetable"
    assert retrain["assets"] == ["etl.tpch.orders", "mlops.tpch_orders.drift"]
    assert parsed["dags"]["mlops_tpch_orders_training"]["schedule"] == "NullTimetable"


def test_event_run_date_prefers_the_events_run_date() -> None:
    from datetime import UTC, datetime

    from mlops_sagemaker.retrain_dag import event_run_date

    stamp = datetime(1996, 4, 2, 3, 0, tzinfo=UTC)
    assert event_run_date({"run_date": "1996-03-31"}, stamp) == "1996-03-31"
    assert event_run_date({}, stamp) == "1996-04-02"
    with pytest.raises(ValueError):
        event_run_date({"run_date": "yesterday"}, stamp)


def _include_with(tmp_path: Path, files: dict[str, str]) -> Path:
    include = tmp_path / "include"
    (include / "config").mkdir(parents=True)
    for name, text in files.items():
        (include / "config" / name).write_text(text)
    return include


SHIPPED = (ROOT / "include/config/tpch_orders.yaml").read_text()


def test_config_typo_shows_a_config_error_dag_naming_the_file_and_field(tmp_path: Path) -> None:
    assert "  max_parallel_jobs: 2" in SHIPPED
    typo = SHIPPED.replace("  max_parallel_jobs: 2", "  max_paralel_jobs: 2")
    include = _include_with(tmp_path, {"tpch_orders.yaml": typo})
    parsed = parse_dags(ROOT / "dags", {"MLOPS_INCLUDE_DIR": str(include)})
    assert parsed["errors"] == {}
    assert set(parsed["dags"]) == {"mlops_tpch_orders_config_error"}
    dag = parsed["dags"]["mlops_tpch_orders_config_error"]
    assert dag["description"].startswith("INVALID CONFIG:")
    assert "tpch_orders.yaml" in dag["description"]
    assert "tuning.max_paralel_jobs" in dag["doc"]
    assert "tuning.max_parallel_jobs" in dag["doc"]  # the now-missing required field
    assert "config-error" in dag["tags"]


def test_one_bad_file_hides_no_other_use_case(tmp_path: Path) -> None:
    bad = (
        SHIPPED.replace("use_case: tpch_orders", "use_case: zz_bad")
        .replace("short_name: tpch-ord", "short_name: zz-bad")
        .replace("threshold: 0.7", "threshold: seven")
    )
    include = _include_with(tmp_path, {"tpch_orders.yaml": SHIPPED, "zz_bad.yaml": bad})
    parsed = parse_dags(ROOT / "dags", {"MLOPS_INCLUDE_DIR": str(include)})
    assert set(parsed["dags"]) == {
        "mlops_tpch_orders_training",
        "mlops_tpch_orders_batch_inference",
        "mlops_tpch_orders_endpoint",
        "mlops_tpch_orders_endpoint_teardown",
        "mlops_zz_bad_config_error",
    }
    assert "evaluation.threshold" in parsed["dags"]["mlops_zz_bad_config_error"]["doc"]


def test_many_use_cases_parse_offline_into_their_own_dags(tmp_path: Path) -> None:
    # The parse-time benchmark's generated use cases (bench/dag_parse_time.py --scale): they
    # must stay valid as the shipped config evolves, and parse with sockets blocked.
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "dag_parse_time", ROOT / "bench/dag_parse_time.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    names = bench.write_use_cases(tmp_path / "include", 3)
    parsed = parse_dags(ROOT / "dags", {"MLOPS_INCLUDE_DIR": str(tmp_path / "include")})
    assert parsed["errors"] == {} and parsed["sockets"] == []
    suffixes = ["training", "batch_inference", "endpoint", "endpoint_teardown"]
    assert set(parsed["dags"]) == {f"mlops_{n}_{s}" for n in names for s in suffixes}
    pools = {p for n in names for p, _ in parsed["dags"][f"mlops_{n}_training"]["pools"].values()}
    assert {f"mlops_{n}" for n in names} <= pools, "each use case has its own pool"


def test_yml_files_are_use_cases_too(tmp_path: Path) -> None:
    include = _include_with(tmp_path, {"tpch_orders.yml": SHIPPED})
    parsed = parse_dags(ROOT / "dags", {"MLOPS_INCLUDE_DIR": str(include)})
    assert set(parsed["dags"]) == {
        "mlops_tpch_orders_training",
        "mlops_tpch_orders_batch_inference",
        "mlops_tpch_orders_endpoint",
        "mlops_tpch_orders_endpoint_teardown",
    }


def test_a_pipeline_dag_exists_only_with_its_section(tmp_path: Path) -> None:
    training_only = SHIPPED[: SHIPPED.index("\nbatch_inference:")] + "\n"
    include = _include_with(tmp_path, {"tpch_orders.yaml": training_only})
    parsed = parse_dags(ROOT / "dags", {"MLOPS_INCLUDE_DIR": str(include)})
    assert set(parsed["dags"]) == {"mlops_tpch_orders_training"}


def test_invalid_cron_names_schedule_cron(tmp_path: Path) -> None:
    bad = SHIPPED.replace('cron: "@daily"', 'cron: "0 25 * * *"')
    assert bad != SHIPPED
    include = _include_with(tmp_path, {"tpch_orders.yaml": bad})
    parsed = parse_dags(ROOT / "dags", {"MLOPS_INCLUDE_DIR": str(include)})
    doc = parsed["dags"]["mlops_tpch_orders_config_error"]["doc"]
    assert "schedule.cron" in doc and "0 25 * * *" in doc


def test_docker_compose_declares_the_stack() -> None:
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    services = set(compose["services"])
    assert {"postgres", "airflow-scheduler", "airflow-apiserver", "presto", "local-aws"} <= services
    assert "tpch.properties" in str(compose["services"]["presto"]["volumes"])
