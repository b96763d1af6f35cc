"""One local AWS endpoint on a single loopback port: SageMaker from our runtime, the rest moto."""

from local_stack.aws_endpoint.server import LocalAwsEndpoint

__all__ = ["LocalAwsEndpoint"]
