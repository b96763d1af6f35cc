"""Run the Presto stand-in: ``python -m local_stack.presto_standin --port 8080``.

HTTPS with users: ``PRESTO_STANDIN_USERS=airflow:secret python -m local_stack.presto_standin
--tls --tls-dir .local/presto-tls`` (passwords come from the environment, never the command line;
the certificate to trust is ``<tls-dir>/ca.pem``).

Data that lands later: ``--visible-up-to-file PATH``; while PATH holds an ISO date D, orders
dated after D and their line items are invisible (checked on every query).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

from .catalog import SCALE_FACTORS
from .security import USERS_ENV, users_from_env
from .server import PrestoStandin


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, generate the eager schemas and serve until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m local_stack.presto_standin",
        description="Presto client-protocol stand-in serving the tpch catalog from DuckDB.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port, 0 for any free one")
    parser.add_argument(
        "--schemas",
        default="tiny,sf1",
        help=f"comma-separated TPC-H schemas to serve, of {', '.join(SCALE_FACTORS)}",
    )
    parser.add_argument(
        "--eager",
        default="tiny",
        help="comma-separated schemas to generate at start (others: on first use)",
    )
    parser.add_argument("--page-rows", type=int, default=1000, help="rows per result page")
    parser.add_argument("--tls", action="store_true", help="serve HTTPS (self-signed certificate)")
    parser.add_argument("--tls-dir", help="where to write ca.pem and key.pem (default: temporary)")
    parser.add_argument(
        "--visible-up-to-file",
        help="file that may hold an ISO date D: orders after D and their line items are hidden",
    )
    parser.add_argument(
        "--hive-catalog",
        help="Presto catalog file of a Hive connector on S3 (etc/catalog/hive.properties)",
    )
    parser.add_argument(
        "--writer-count", type=int, default=1, help="Parquet files per CREATE TABLE AS"
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    schemas = tuple(s.strip() for s in args.schemas.split(",") if s.strip())
    eager = tuple(s.strip() for s in args.eager.split(",") if s.strip())
    users = users_from_env()
    if users and not args.tls:
        parser.error(f"{USERS_ENV} is set: password authentication requires --tls, as in Presto")
    standin = PrestoStandin(
        args.host,
        args.port,
        schemas=schemas,
        page_rows=args.page_rows,
        eager_schemas=eager,
        users=users,
        tls=args.tls,
        tls_dir=args.tls_dir,
        visible_up_to_file=args.visible_up_to_file,
        hive_catalog=args.hive_catalog,
        writer_count=args.writer_count,
    )
    standin.start()
    trust = f", certificate {standin.ca_path}" if standin.ca_path else ""
    print(
        f"Presto stand-in listening on {standin.url} (catalog tpch, schemas {', '.join(schemas)}"
        f"{trust})",
        flush=True,
    )
    stopped = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stopped.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    stopped.wait()
    standin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
