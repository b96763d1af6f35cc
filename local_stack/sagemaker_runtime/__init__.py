"""A local SageMaker runtime: the SageMaker and SageMaker Runtime APIs, executing jobs for real.

Dev/test tooling only (never imported by ``dags/`` or ``plugins/``): the DAGs reach it through
the Airflow AWS connection's ``endpoint_url``. See ``local_stack/README.md``.
"""

import importlib

# Modules whose import registers their actions with ``api.action``.
ACTION_MODULES = (
    "local_stack.sagemaker_runtime.jobs",
    "local_stack.sagemaker_runtime.tuning",
    "local_stack.sagemaker_runtime.tags",
    "local_stack.sagemaker_runtime.registry",
    "local_stack.sagemaker_runtime.transform",
    "local_stack.sagemaker_runtime.endpoint_configs",
    "local_stack.sagemaker_runtime.endpoints",
)


def load_actions() -> None:
    """Import every action module once so that all actions are registered."""
    for module in ACTION_MODULES:
        importlib.import_module(module)
