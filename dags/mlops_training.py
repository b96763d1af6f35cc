"""Airflow training DAGs: one per use-case YAML in include/config (see README.md).

Thin on purpose: the config is validated and the DAG built by the ``mlops_sagemaker`` package in
``plugins/``. A config error fails this file's import with a message naming the file and field.
"""

import os
from pathlib import Path

from mlops_sagemaker.config import load_use_cases
from mlops_sagemaker.training_dag import build_training_dag

# Deployments that keep include/ elsewhere point MLOPS_INCLUDE_DIR at it.
INCLUDE = Path(
    os.environ.get("MLOPS_INCLUDE_DIR") or Path(__file__).resolve().parent.parent / "include"
)

for _config in load_use_cases(INCLUDE / "config"):
    globals()[f"mlops_{_config.use_case}_training"] = build_training_dag(_config, INCLUDE)
