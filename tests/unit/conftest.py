"""A moto S3 server shared by the unit tests that stream to or read from S3."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import boto3
import pytest
from moto.server import ThreadedMotoServer


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """URL of a moto server (S3 over real HTTP, as the hooks talk to AWS)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def s3_client(s3_endpoint: str):
    """A boto3 S3 client for the moto server."""
    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def s3_bucket(s3_client, s3_endpoint: str, aws_default_at) -> Iterator[Callable[[str], object]]:
    """``s3_bucket(name)``: a fresh bucket (removed after the test) and ``aws_default`` pointing
    at the server; returns the client."""
    made: list[str] = []

    def make(name: str):
        s3_client.create_bucket(Bucket=name)
        made.append(name)
        aws_default_at(s3_endpoint)
        return s3_client

    yield make
    for name in made:
        keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=name).get("Contents", [])]
        if keys:
            s3_client.delete_objects(Bucket=name, Delete={"Objects": [{"Key": k} for k in keys]})
        s3_client.delete_bucket(Bucket=name)
