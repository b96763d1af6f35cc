"""Airflow training DAGs: one per use-case YAML in include/config with a ``training`` section.

Thin on purpose: the configs are validated and the DAGs built by the ``mlops_sagemaker`` package
in ``plugins/``. An invalid file never hides another use case: it gets a ``*_config_error`` DAG
(built here, once for every pipeline) that shows the error (file and field) on the DAG list.
"""

from mlops_sagemaker.dag_factory import include_dir, publish_dags

publish_dags(globals(), include_dir(__file__), "training", with_config_errors=True)
