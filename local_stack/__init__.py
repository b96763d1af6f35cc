"""Local development and test stack for the MLOps DAG package.

Stand-ins for the services the DAGs talk to (Presto, the AWS/SageMaker APIs), so the same DAG
code runs on one machine without a cluster or an AWS account. Nothing in here is imported by
the DAGs or by ``plugins/``: they only see Airflow connections that point here.
"""
