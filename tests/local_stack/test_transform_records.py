"""The batch-transform runtime's CSV record helpers read and write exactly what ``csv`` does.

``_csv_fields`` and ``_csv_line`` split and join quote-free records directly (the per-record
``csv`` reader and writer were the runtime's largest cost at sf1); every other record goes
through ``csv``. Seeded random records mixing plain cells with quotes, commas, carriage
returns, NUL and empty cells compare both helpers with the ``csv`` module itself.
"""

from __future__ import annotations

import csv
import io
import random

import pytest

from local_stack.sagemaker_runtime.transform import _csv_fields, _csv_line

ALPHABET = ["1", "2.5", "-3e-7", "abc", " x ", "", '"', ",", "\r", "\x00", "é", "'", ";", "\t"]


def _reference_fields(raw: bytes) -> list[str] | None:
    try:
        rows = list(csv.reader(io.StringIO(raw.decode("utf-8"))))
    except csv.Error:
        return None
    return rows[0] if len(rows) == 1 else None


def _reference_line(fields: list[str]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(fields)
    return buffer.getvalue().encode("utf-8")


def _random_cells(rng: random.Random) -> list[str]:
    plain = rng.random() < 0.5
    pool = ALPHABET[:6] if plain else ALPHABET
    return ["".join(rng.choices(pool, k=rng.randint(0, 3))) for _ in range(rng.randint(1, 7))]


@pytest.mark.parametrize("seed", range(4))
def test_fields_and_lines_match_the_csv_module(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(2000):
        cells = _random_cells(rng)
        assert _csv_line(cells) == _reference_line(cells), cells
        raw = ",".join(cells).encode("utf-8")
        expected = _reference_fields(raw)
        if expected is None:
            with pytest.raises(ValueError, match=r"exactly one line|not a CSV record"):
                _csv_fields(raw)
        else:
            assert _csv_fields(raw) == expected, raw


def test_plain_records_round_trip() -> None:
    raw = b"0.25,1,17.5,abc"
    assert _csv_fields(raw) == ["0.25", "1", "17.5", "abc"]
    assert _csv_line(_csv_fields(raw)) == raw
    assert _csv_line(["a,b", "c"]) == b'"a,b",c'
    assert _csv_line([""]) == b'""'
    assert _csv_line([None, 2.5]) == b",2.5"
