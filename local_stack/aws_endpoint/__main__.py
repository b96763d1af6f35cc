"""``python -m local_stack.aws_endpoint``: serve the local AWS endpoint until interrupted."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

from local_stack.aws_endpoint.server import LocalAwsEndpoint


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and serve until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4566)
    parser.add_argument("--workdir", type=Path, default=None, help="where jobs keep their files")
    parser.add_argument("--max-parallel-containers", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    endpoint = LocalAwsEndpoint(
        args.host, args.port, args.workdir, args.max_parallel_containers, log_requests=True
    )
    endpoint.start()
    print(f"local AWS endpoint ready on {endpoint.url}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    endpoint.stop()


if __name__ == "__main__":
    main()
