"""The Airflow pools the use cases' SageMaker job tasks run in (``sagemaker.pool``), as the
``airflow pools import`` file: ``python -m mlops_sagemaker.pools <config dir> > pools.json``.

Each pool has ``include_deferred``: a deferred job task (waiting in the triggerer) keeps its
slots, so the pool bounds the SageMaker jobs running at once. Airflow does not create pools from
DAG files; ``make ui`` and ``docker/airflow-init.sh`` import this file, production deployments
run the same command or ``airflow pools set <name> <slots> <description> --include-deferred``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mlops_sagemaker.config import load_use_cases


def pools(config_dir: Path) -> dict[str, dict]:
    """``{pool name: {slots, description, include_deferred}}`` of every valid use case."""
    return {
        config.pool_name: {
            "slots": config.sagemaker.pool.slots,
            "description": f"SageMaker jobs of {config.use_case} running at once",
            "include_deferred": True,
        }
        for config in load_use_cases(config_dir)
    }


def main(argv: list[str] | None = None) -> None:
    """Print the pools file of the use cases under ``argv[0]`` (a config folder)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m mlops_sagemaker.pools <config dir>")
    print(json.dumps(pools(Path(args[0])), indent=2))


if __name__ == "__main__":
    main()
