"""Airflow batch-inference DAGs: one per use-case YAML with a ``batch_inference`` section.

Thin on purpose, like ``mlops_training.py`` (which also shows the invalid config files).
"""

from mlops_sagemaker.dag_factory import include_dir, publish_dags

publish_dags(globals(), include_dir(__file__), "batch_inference")
