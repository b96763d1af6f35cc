"""Airflow training DAGs: one per use-case YAML in include/config (see README.md).

Thin on purpose: the configs are validated and the DAGs built by the ``mlops_sagemaker`` package
in ``plugins/``. An invalid file never hides another use case: it gets a ``*_config_error`` DAG
that shows the error (file and field) on the DAG list, and its error is logged.
"""

import os
from pathlib import Path

from mlops_sagemaker.config import load_all
from mlops_sagemaker.config_error_dag import build_config_error_dag
from mlops_sagemaker.training_dag import build_training_dag

# Deployments that keep include/ elsewhere point MLOPS_INCLUDE_DIR at it.
INCLUDE = Path(
    os.environ.get("MLOPS_INCLUDE_DIR") or Path(__file__).resolve().parent.parent / "include"
)

_loaded = load_all(INCLUDE / "config")
for _config in _loaded.use_cases:
    globals()[f"mlops_{_config.use_case}_training"] = build_training_dag(_config, INCLUDE)
for _path, _error in _loaded.errors.items():
    _dag = build_config_error_dag(_path, _error)
    globals()[_dag.dag_id] = _dag
