"""A PostgreSQL server for Airflow's metadata database, started and stopped by our commands.

The server comes from the ``pgserver`` wheel on PyPI, which ships PostgreSQL 16's binaries
(no system package, no Docker). ``pgserver`` runs ``initdb`` on a new data folder and starts the
server with ``pg_ctl``, listening on a Unix socket in the data folder only (no TCP port to
collide with); as root it runs the server as an unprivileged ``pgserver`` user (PostgreSQL
refuses to run as root), which needs the data folder's parents to be traversable, so it adds
``o+rx`` to them. Authentication is ``trust`` on that socket: a local, single-user database.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

DATABASE = "airflow"


class Postgres:
    """``with Postgres(folder) as pg:`` a running server with the ``airflow`` database."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self._server: Any = None

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the ``airflow`` database (psycopg2 over the server's socket)."""
        socket_dir = self._server.get_postmaster_info().socket_dir
        return f"postgresql+psycopg2://postgres@/{DATABASE}?host={socket_dir}"

    def start(self) -> Postgres:
        """Initialise the data folder if new, start the server, create the database."""
        import pgserver  # the server binaries: only the commands that need Postgres load it

        # pgserver logs each step at INFO on the root logger; its errors still show.
        logging.getLogger("pgserver").setLevel(logging.WARNING)
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self._server = pgserver.get_server(self.pgdata, cleanup_mode="stop")
        found = self._server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}';")
        if "(1 row)" not in found:
            self._server.psql(f"CREATE DATABASE {DATABASE};")
        return self

    def stop(self) -> None:
        """Stop the server (``pg_ctl stop``); the data stays for the next start."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None

    def __enter__(self) -> Postgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
