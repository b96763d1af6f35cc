"""Airflow batch-inference DAGs: one per use-case YAML with a ``batch_inference`` section.

Thin on purpose, like ``mlops_training.py`` (which also shows the invalid config files).
"""

# The Airflow modules the DAGs are built from, named here so that the DAG processor imports
# them once, before it forks a parser for each file ("parsing_pre_import_modules"); the
# package's own imports are invisible to it. tests/unit/test_dag_integrity.py keeps this
# list complete.
import airflow.providers.amazon.aws.assets.redshift
import airflow.providers.amazon.aws.assets.s3
import airflow.providers.amazon.aws.operators.sagemaker
import airflow.providers.common.compat.assets
import airflow.providers.common.io.assets.file
import airflow.providers.common.sql.sensors.sql
import airflow.providers.presto.assets.presto
import airflow.providers.standard.decorators.python
import airflow.providers.standard.operators.hitl
import airflow.sdk.definitions.decorators

from mlops_sagemaker.dag_factory import include_dir, publish_dags

publish_dags(globals(), include_dir(__file__), "batch_inference")
