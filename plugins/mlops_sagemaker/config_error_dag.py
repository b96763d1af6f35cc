"""A visible stand-in DAG for a use-case file that does not validate.

Raising at import would put the error in Airflow's "Dag import errors" but drop the DAGs of every
*valid* use case built by the same DAG file. Instead each invalid file gets a DAG
``mlops_<file stem>_config_error`` (tag ``config-error``) in the DAG list: its description is the
error's first line, its docs hold the whole message, and its only task fails with that message
if someone triggers it. The error is also logged by the DAG processor.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from pathlib import Path

from airflow.sdk import DAG, task

log = logging.getLogger(__name__)
_NOT_ID = re.compile(r"[^A-Za-z0-9_.-]+")


def config_error_dag_id(path: Path) -> str:
    """The stand-in DAG's id for the invalid file ``path``."""
    return f"mlops_{_NOT_ID.sub('_', Path(path).stem)}_config_error"


def build_config_error_dag(path: Path, message: str) -> DAG:
    """A never-scheduled DAG that shows ``message`` and fails with it when triggered."""
    log.error("Use-case config %s is invalid; its DAGs are not built:\n%s", path, message)
    first_line = message.splitlines()[0] if message else str(path)
    with DAG(
        dag_id=config_error_dag_id(path),
        description=f"INVALID CONFIG: {first_line}"[:1000],
        doc_md=(
            f"### Invalid use-case config `{Path(path).name}`\n\n"
            "Fix the file; this DAG disappears and the use case's DAGs appear on the next "
            f"parse.\n\n```\n{message}\n```\n"
        ),
        schedule=None,
        start_date=datetime(2020, 1, 1, tzinfo=UTC),
        tags=["mlops", "config-error"],
    ) as dag:

        @task(retries=0)
        def config_error() -> None:
            """Fail with the config error (nothing else can run until the file is fixed)."""
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(message)

        config_error()
    return dag
