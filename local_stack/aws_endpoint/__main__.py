"""``python -m local_stack.aws_endpoint``: serve the local AWS endpoint until interrupted.

With ``--workdir`` the endpoint keeps its state there across restarts (``--clean`` starts
empty, ``--no-persist`` keeps it in memory only); without, it works in a temporary folder.
"""

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
    parser.add_argument(
        "--clean", action="store_true", help="empty the work dir first (forget the saved state)"
    )
    parser.add_argument(
        "--no-persist",
        action="store_true",
        help="keep the state in memory only (by default it is saved in WORKDIR/state)",
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="multiply the service's clocks (metric periods, autoscaling periods and cooldowns)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    endpoint = LocalAwsEndpoint(
        args.host,
        args.port,
        args.workdir,
        args.max_parallel_containers,
        log_requests=True,
        persist=args.workdir is not None and not args.no_persist,
        clean=args.clean and args.workdir is not None,
        time_scale=args.time_scale,
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
