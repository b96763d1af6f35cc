"""Network isolation of job processes, as strict as SageMaker's.

SageMaker's rule (CreateTrainingJob / CreateProcessingJob ``NetworkConfig`` /
CreateModel ``EnableNetworkIsolation``, in botocore's ``sagemaker`` service model
documentation): "Isolates the training container. No inbound or outbound network calls can be
made, except for calls between peers within a training cluster for distributed training. If you
enable network isolation for training jobs that are configured to use a VPC, SageMaker downloads
and uploads customer data and model artifacts through the specified VPC, but the training
container does not have network access." Also https://docs.aws.amazon.com/sagemaker/latest/dg/
mkt-algo-model-internet-free.html: "If you enable network isolation, the containers can't make
any outbound network calls, even to other AWS services such as Amazon S3. Additionally, no AWS
credentials are made available to the container runtime environment."

Locally an isolated job's process gets:

* an environment with no way to find the local endpoint or credentials: every ``AWS_*``
  variable (keys, session tokens, profiles, ``AWS_ENDPOINT_URL*``, container/web-identity
  credential sources) except the region, ``S3_ENDPOINT_URL`` (the training toolkit's),
  every ``*_ENDPOINT_URL``, ``BOTO_*`` and the proxy variables are removed; the shared config
  and credentials files are pointed at ``/dev/null`` (they may hold keys or an ``endpoint_url``)
  and the EC2 instance metadata service is switched off (on an EC2 host it would hand out the
  host's role). boto3 inside then fails with ``NoCredentialsError`` before any request;
* where the kernel allows unprivileged user namespaces, its own empty network namespace
  (``unshare --user --map-root-user --net``), so even a script with hard-coded credentials and
  endpoint gets ``Network is unreachable``, as in an isolated container. Where it does not
  (some CI sandboxes), only the environment is isolated: :func:`network_namespace_available`
  tells which.

The data channels, the code channel and the outputs are still moved by the runtime itself,
outside the job's process, as SageMaker does it outside the container.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

_KEEP = frozenset({"AWS_REGION", "AWS_DEFAULT_REGION"})
_PROXIES = frozenset({"http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy"})
_UNSHARE = ("unshare", "--user", "--map-root-user", "--net", "--")


def enabled(record: Mapping[str, Any]) -> bool:
    """Whether a job or model record asks for isolation: ``EnableNetworkIsolation`` (training
    jobs, tuning children, models) or ``NetworkConfig.EnableNetworkIsolation`` (processing)."""
    if record.get("EnableNetworkIsolation"):
        return True
    return bool((record.get("NetworkConfig") or {}).get("EnableNetworkIsolation"))


def _reaches_aws(name: str) -> bool:
    upper = name.upper()
    if upper in _KEEP:
        return False
    return (
        upper.startswith(("AWS_", "BOTO_"))
        or upper.endswith("_ENDPOINT_URL")
        or name.lower() in _PROXIES
    )


def isolated_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without any endpoint, credential, AWS config or proxy setting (see module doc)."""
    result = {k: v for k, v in env.items() if not _reaches_aws(k)}
    result.update(
        {
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )
    return result


@functools.cache
def network_namespace_available() -> bool:
    """Whether this machine lets us start a process in a new, empty network namespace."""
    if shutil.which("unshare") is None:
        return False
    try:
        probe = subprocess.run([*_UNSHARE, "true"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    if probe.returncode != 0:
        log.warning(
            "network isolation: no user/network namespaces here (%s); isolated jobs get an "
            "environment without endpoint or credentials only",
            probe.stderr.decode(errors="replace").strip(),
        )
    return probe.returncode == 0


def isolate(
    record: Mapping[str, Any], argv: list[str], env: dict[str, str]
) -> tuple[list[str], dict[str, str]]:
    """The command and environment of a job process, isolated if the record asks for it."""
    if not enabled(record):
        return argv, env
    if network_namespace_available():
        argv = [*_UNSHARE, *argv]
    return argv, isolated_env(env)
