"""Lint of the shipped use-case SQL: rendered as the DAG renders it, then parsed with Presto's
grammar (the Presto stand-in's check), so a query Presto would reject fails CI, not a DAG run."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pendulum
import pytest

from local_stack.presto_standin.errors import PrestoError
from local_stack.presto_standin.grammar import check_statement
from mlops_sagemaker.batch_dag import build_batch_inference_dag
from mlops_sagemaker.config import load_all
from mlops_sagemaker.training_dag import build_training_dag

ROOT = Path(__file__).resolve().parents[2]
INCLUDE = ROOT / "include"
# First and last order dates of TPC-H and a leap day in between.
RUN_DATES = ("1993-01-01", "1996-02-29", "1998-08-02")
USE_CASES = load_all(INCLUDE / "config").use_cases


BUILDERS = {"training": build_training_dag, "batch_inference": build_batch_inference_dag}


@functools.cache
def pipeline_dag(use_case: str, pipeline: str):
    """The use case's DAG of ``pipeline``, built once per test session."""
    config = next(c for c in USE_CASES if c.use_case == use_case)
    return BUILDERS[pipeline](config, INCLUDE)


def queries(config) -> list[tuple[str, str]]:
    """(pipeline, SQL file) of every query the config's pipeline sections name."""
    found = []
    for pipeline in BUILDERS:
        section = getattr(config, pipeline)
        if section is not None:
            found += [(pipeline, section.query), (pipeline, section.data_arrival_query)]
    return found


def render(config, name: str, ds: str, pipeline: str = "training") -> str:
    """Render ``include/sql/<sql_dir>/<name>`` with the DAG's own Jinja environment (its
    StrictUndefined, macros ``source``/``window_start``, Airflow's filters) and the context
    Airflow gives the run for ``ds``."""
    dag = pipeline_dag(config.use_case, pipeline)
    run_after = pendulum.instance(datetime.fromisoformat(ds).replace(tzinfo=UTC) + timedelta(1))
    interval = dag.timetable.infer_manual_data_interval(run_after=run_after)
    context = {
        "ds": interval.start.strftime("%Y-%m-%d"),
        "ds_nodash": interval.start.strftime("%Y%m%d"),
        "logical_date": interval.start,
        "data_interval_start": interval.start,
        "data_interval_end": interval.end,
        "params": {},
    }
    return dag.get_template_env().get_template(name).render(**context)


def sql_cases():
    for config in USE_CASES:
        for pipeline, name in queries(config):
            for ds in RUN_DATES:
                case = f"{config.use_case}/{pipeline}/{name}/{ds}"
                yield pytest.param(config, pipeline, name, ds, id=case)


def test_every_query_the_configs_name_is_linted():
    assert USE_CASES, "no use case found"
    linted = {(c.values[0].use_case, c.values[2]) for c in sql_cases()}
    for config in USE_CASES:
        shipped = {p.name for p in (INCLUDE / "sql" / config.sql_dir).glob("*.sql")}
        assert shipped == {name for _, name in queries(config)}, "an unused or missing SQL file"
        for _, name in queries(config):
            assert (config.use_case, name) in linted


@pytest.mark.parametrize(("config", "pipeline", "name", "ds"), list(sql_cases()))
def test_shipped_sql_parses_as_presto(config, pipeline, name, ds):
    sql = render(config, name, ds, pipeline)
    assert "{{" not in sql and "{%" not in sql
    check_statement(sql)


def test_lint_rejects_a_broken_query(tmp_path):
    """Negative control: the training query with an empty GROUP BY item fails with Presto's
    message, line and column."""
    config = USE_CASES[0]
    sql = render(config, config.need_training().query, "1996-02-29")
    broken = sql.replace("GROUP BY o.orderkey,", "GROUP BY o.orderkey,,", 1)
    assert broken != sql
    line = broken[: broken.index(",,")].count("\n") + 1
    column = len(broken[: broken.index(",,")].rsplit("\n", 1)[-1]) + 2
    with pytest.raises(PrestoError) as raised:
        check_statement(broken)
    assert raised.value.code.name == "SYNTAX_ERROR"
    assert (raised.value.line, raised.value.column) == (line, column)
    assert raised.value.message.startswith(f"line {line}:{column}: mismatched input ','.")
