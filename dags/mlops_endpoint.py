"""Airflow real-time endpoint DAGs: ``mlops_<use_case>_endpoint`` and its ``_teardown`` for
every use-case YAML with an ``endpoint`` section.

Thin on purpose, like ``mlops_training.py`` (which also shows the invalid config files).
"""

from mlops_sagemaker.dag_factory import include_dir, publish_dags

publish_dags(globals(), include_dir(__file__), "endpoint")
