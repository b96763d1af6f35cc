"""Run the step-code tests under every supported SageMaker scikit-learn image.

Collected by the host's pytest only (see ``conftest.py``).

Each image's virtualenv (``local_stack/images.py``: the image's Python and exact packages,
built by ``make install``) runs this folder's ``test_step_*.py`` with its own pytest. A failure
there fails the test of that image here, with the image's pytest output (tracebacks included).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import WaiterError

from local_stack import images
from local_stack.sagemaker_runtime.containers import image_path_env

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
_OUTPUT_LIMIT = 20000

# DuckDB's TPC-H tables prefix their columns (o_orderkey, l_extendedprice, ...); Presto's don't.
ORDERS_SQL = """
SELECT
    o.o_orderkey AS orderkey,
    o.o_orderdate AS orderdate,
    CAST(SUM(l.l_extendedprice) AS DOUBLE) AS total_extended_price,
    CAST(AVG(l.l_discount) AS DOUBLE) AS avg_discount,
    CAST(SUM(l.l_quantity) AS DOUBLE) AS total_quantity,
    COUNT(*) AS lineitem_count,
    CAST(SUM(l.l_extendedprice * (1 - l.l_discount) * l.l_tax) AS DOUBLE) AS total_payable_tax,
    CASE WHEN MIN(CASE WHEN l.l_receiptdate > l.l_commitdate THEN 1 ELSE 0 END) = 1
        THEN 1 ELSE 0 END AS label
FROM orders AS o
JOIN lineitem AS l ON l.l_orderkey = o.o_orderkey
GROUP BY o.o_orderkey, o.o_orderdate
ORDER BY o.o_orderkey
"""


def tpch_orders_table(scale_factor: float = 0.01) -> pa.Table:
    """The extraction frame for every TPC-H order, generated offline with DuckDB."""
    import duckdb
    import duckdb_extension_tpch

    package_dir = Path(duckdb_extension_tpch.__file__).parent
    extension = next(package_dir.rglob("tpch.duckdb_extension"))
    with duckdb.connect() as con:
        con.execute(f"LOAD '{extension}'")
        con.execute(f"CALL dbgen(sf={float(scale_factor)})")
        return con.execute(ORDERS_SQL).to_arrow_table()


@pytest.fixture(scope="module")
def tpch_parquet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The TPC-H extraction frame, generated once on the host (DuckDB) for every image."""
    path = tmp_path_factory.mktemp("tpch") / "orders.parquet"
    pq.write_table(tpch_orders_table(), path)
    return path


@pytest.mark.parametrize("version", list(images.load_images()))
def test_step_code_passes_under_the_image(version: str, tpch_parquet: Path) -> None:
    spec = images.load_images()[version]
    python = images.interpreter_for(f"sagemaker-scikit-learn:{version}")
    env = image_path_env(dict(os.environ), python)
    env.update({"STEP_CODE_IMAGE": version, "STEP_CODE_TPCH_PARQUET": str(tpch_parquet)})
    run = subprocess.run(
        [
            str(python),
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--confcutdir",
            str(HERE),
            str(HERE),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    output = (run.stdout + run.stderr)[-_OUTPUT_LIMIT:]
    assert run.returncode == 0, f"step-code tests under image {version} failed:\n{output}"
    # The tests really ran on the image's interpreter and libraries, and found tests to run.
    header = re.search(
        r"step-code image: (\S+); python (\d+\.\d+)\.\d+; scikit-learn (\S+);", output
    )
    assert header, f"no step-code header in the output of image {version}:\n{output}"
    assert header.group(1) == version
    assert header.group(2) == spec.python
    assert f"scikit-learn=={header.group(3)}" in spec.requirements
    passed = re.search(r"(\d+) passed", output)
    assert passed and int(passed.group(1)) >= 40, output


# --- the image table and the local runtime -----------------------------------------------------
ECR = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn"
VERSION_SCRIPT = (
    "import json, os, platform, sklearn, pandas\n"
    "out = os.path.join(os.environ['SAGEMAKER_BASE_DIR'], 'processing', 'output', 'v.json')\n"
    "os.makedirs(os.path.dirname(out), exist_ok=True)\n"
    "json.dump([platform.python_version(), sklearn.__version__, pandas.__version__], open(out, 'w'))\n"
)


@pytest.mark.parametrize(
    ("uri", "version"),
    [
        (f"{ECR}:1.2-1-cpu-py3", "1.2-1"),
        (f"{ECR}:1.4-2", "1.4-2"),
        ("sagemaker-scikit-learn:1.4-2-cpu-py3", "1.4-2"),
        (f"{ECR}:1.4-2-py312-cpu-py3", None),
        ("683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1", None),
    ],
)
def test_image_uris_map_to_framework_versions(uri: str, version: str | None) -> None:
    assert images.framework_version(uri) == version


def test_config_rejects_a_framework_version_outside_the_table(tmp_path: Path) -> None:
    import yaml

    from mlops_sagemaker.config import SKLEARN_FRAMEWORK_VERSIONS, ConfigError, load_use_case

    assert tuple(images.load_images()) == SKLEARN_FRAMEWORK_VERSIONS
    raw = yaml.safe_load((ROOT / "include" / "config" / "tpch_orders.yaml").read_text())
    assert raw["sagemaker"]["sklearn_framework_version"] == SKLEARN_FRAMEWORK_VERSIONS[-1]
    raw["sagemaker"]["sklearn_framework_version"] = "1.4-3"
    path = tmp_path / "tpch_orders.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"sagemaker\.sklearn_framework_version: .*'1\.4-3'"):
        load_use_case(path)


@pytest.fixture(scope="module")
def sagemaker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    """boto3 SageMaker and S3 clients of a local endpoint with the script in S3."""
    import boto3

    from local_stack.aws_endpoint import LocalAwsEndpoint

    endpoint = LocalAwsEndpoint(port=0, workdir=tmp_path_factory.mktemp("aws")).start()
    kwargs = {
        "endpoint_url": endpoint.url,
        "region_name": "us-east-1",
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
    }
    s3 = boto3.client("s3", **kwargs)
    s3.create_bucket(Bucket="images")
    s3.put_object(Bucket="images", Key="code/v.py", Body=VERSION_SCRIPT.encode())
    yield boto3.client("sagemaker", **kwargs), s3
    endpoint.stop()


def _processing_job(sagemaker: Any, name: str, image: str) -> dict[str, Any]:
    sagemaker.create_processing_job(
        ProcessingJobName=name,
        RoleArn="arn:aws:iam::123456789012:role/sagemaker-local",
        ProcessingResources={
            "ClusterConfig": {
                "InstanceCount": 1,
                "InstanceType": "ml.m5.large",
                "VolumeSizeInGB": 1,
            }
        },
        AppSpecification={
            "ImageUri": image,
            "ContainerEntrypoint": ["python3", "/opt/ml/processing/input/code/v.py"],
        },
        ProcessingInputs=[
            {
                "InputName": "code",
                "S3Input": {
                    "S3Uri": "s3://images/code/v.py",
                    "LocalPath": "/opt/ml/processing/input/code",
                    "S3DataType": "S3Prefix",
                    "S3InputMode": "File",
                },
            }
        ],
        ProcessingOutputConfig={
            "Outputs": [
                {
                    "OutputName": "v",
                    "S3Output": {
                        "S3Uri": f"s3://images/out/{name}",
                        "LocalPath": "/opt/ml/processing/output",
                        "S3UploadMode": "EndOfJob",
                    },
                }
            ]
        },
    )
    with contextlib.suppress(WaiterError):  # raised for a Failed job, which some tests expect
        sagemaker.get_waiter("processing_job_completed_or_stopped").wait(
            ProcessingJobName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 300}
        )
    return sagemaker.describe_processing_job(ProcessingJobName=name)


@pytest.mark.parametrize("version", list(images.load_images()))
def test_processing_script_runs_on_the_images_python_and_packages(
    sagemaker: tuple[Any, Any], version: str
) -> None:
    client, s3 = sagemaker
    job = _processing_job(client, f"image-{version.replace('.', '-')}", f"{ECR}:{version}-cpu-py3")
    assert job["ProcessingJobStatus"] == "Completed", job.get("FailureReason")
    body = s3.get_object(Bucket="images", Key=f"out/{job['ProcessingJobName']}/v.json")["Body"]
    python, sklearn_version, pandas_version = json.loads(body.read())
    spec = images.load_images()[version]
    assert python.rsplit(".", 1)[0] == spec.python
    assert f"scikit-learn=={sklearn_version}" in spec.requirements
    assert f"pandas=={pandas_version}" in spec.requirements


def test_an_unknown_image_fails_the_job_naming_the_known_ones(
    sagemaker: tuple[Any, Any],
) -> None:
    client, _ = sagemaker
    image = f"{ECR}:0.23-1-cpu-py3"
    job = _processing_job(client, "image-unknown", image)
    assert job["ProcessingJobStatus"] == "Failed"
    reason = job["FailureReason"]
    assert reason.startswith("ClientError: "), reason
    assert image in reason
    for version in images.load_images():
        assert f"sagemaker-scikit-learn:{version}-cpu-py3" in reason
    assert "ProcessingStartTime" not in job
