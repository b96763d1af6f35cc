"""Data that lands later: a "visible up to" date for the TPC-H data, read from a text file.

A data-arrival sensor only shows that it waits if the data of its run date is missing at first
and arrives later. The TPC-H data is generated once, so instead of loading rows later the
stand-in hides them: with a date D in the file, ``orders`` rows with ``orderdate > D`` and the
``lineitem`` rows of those orders are invisible to every query (``translate.py`` reads the two
tables through a filter then). Without the file everything is visible and queries are unchanged.

The file is written by another process (``LocalStack.set_presto_visible_up_to``), so it is
checked on every query; a ``stat`` call decides whether it changed since the last read.
"""

from __future__ import annotations

import logging
import os
from datetime import date
from pathlib import Path

from .errors import GENERIC_INTERNAL_ERROR, PrestoError

log = logging.getLogger(__name__)

# What identifies one version of the file: inode (replaced atomically, so a new one per write),
# modification and change times, size.
_Signature = tuple[int, int, int, int]


def _signature(path: Path) -> _Signature | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)


class VisibleUpToFile:
    """The "visible up to" date held in ``path``: an ISO date (``1998-08-01``) or no file.

    :meth:`read` is called for every query from the server's request threads.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        # The file's signature and its date at the last read (None: not read yet). Replaced as
        # one tuple, so request threads racing here at worst read the file twice.
        self._last: tuple[_Signature | None, date | None] | None = None

    def read(self) -> date | None:
        """The date now in the file, ``None`` when there is no file (everything visible).

        Raises :class:`PrestoError` (``GENERIC_INTERNAL_ERROR``) when the file holds something
        else than an ISO date, so that queries fail loudly instead of seeing the wrong data.
        """
        signature = _signature(self.path)
        last = self._last
        if last is not None and last[0] == signature:
            return last[1]
        day = None if signature is None else self._parse()
        if last is None or last[1] != day:
            log.info("TPC-H data visible up to %s", day or "the end (all of it)")
        self._last = (signature, day)
        return day

    def _parse(self) -> date | None:
        try:
            text = self.path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:  # removed since the stat: the next read sees the new state
            return None
        try:
            return date.fromisoformat(text)
        except ValueError:
            raise PrestoError(
                GENERIC_INTERNAL_ERROR,
                f"The Presto stand-in's visible-up-to file {self.path} holds {text!r}, "
                "not an ISO date (YYYY-MM-DD)",
            ) from None
