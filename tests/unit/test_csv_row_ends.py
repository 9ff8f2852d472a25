"""``postgresql_csv.row_ends``: CSV text cut into chunks of whole rows, whatever the reads.

A cut inside a quoted value (a newline, a doubled quote) would make pyarrow read half a row
as one; a chunk that is not cut where it could be would make pyarrow's block too small.
"""

from __future__ import annotations

import csv
import io
import random
import sys
from collections.abc import Callable

from server.sql.dialects.postgresql_csv import CHUNK_BYTES, row_ends

csv.field_size_limit(sys.maxsize)


def csv_text(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue().encode()


def pieces_of(text: bytes, rng: random.Random) -> Callable[[], bytes]:
    """A source that hands ``text`` over in reads of random sizes, as a pipe does."""
    view = memoryview(text)
    at = 0

    def read() -> bytes:
        nonlocal at
        size = rng.choice([1, 7, 4096, 65536, CHUNK_BYTES])
        piece = bytes(view[at : at + size])
        at += len(piece)
        return piece

    return read


def assert_whole_rows(text: bytes, chunks: list[bytes], rows: list[list[str]]) -> None:
    """``chunks`` are ``text`` cut at row ends, each as long as a chunk less one row."""
    longest = max(len(csv_text([row])) for row in rows)
    assert b"".join(chunks) == text
    parsed = []
    for chunk in chunks:
        assert chunk.endswith(b"\n")
        parsed += list(csv.reader(io.StringIO(chunk.decode()), lineterminator="\n"))
    assert parsed == rows
    assert all(len(chunk) > CHUNK_BYTES - longest for chunk in chunks[:-1])


def test_quoted_newlines_and_quotes_never_end_a_chunk() -> None:
    rng = random.Random(7)
    values = ["", "a", 'say "hi"', "two\nlines", '"\n"', "\n\n\n", ",", "x" * 3000]
    rows = [[rng.choice(values) for _ in range(4)] for _ in range(6000)]
    text = csv_text(rows)
    assert len(text) > 3 * CHUNK_BYTES
    for seed in range(3):
        chunks = list(row_ends(pieces_of(text, random.Random(seed))))
        assert_whole_rows(text, chunks, rows)
        assert len(chunks) > 1


def test_a_row_larger_than_a_chunk_is_one_chunk() -> None:
    # One quoted value of many newlines, larger than three chunks, between small rows.
    big = "z\n" * (2 * CHUNK_BYTES)
    rows = [["a", "b"]] * 1000 + [["c", big]] + [["d", "e"]] * 1000
    text = csv_text(rows)
    chunks = list(row_ends(pieces_of(text, random.Random(1))))
    assert_whole_rows(text, chunks, rows)
    assert any(big.encode() in chunk for chunk in chunks)


def test_an_empty_copy_is_no_chunk() -> None:
    assert list(row_ends(lambda: b"")) == []


def test_values_of_quotes_or_quoted_newlines_only_are_read_whole() -> None:
    # What a query made to be slow sends: every byte a quote, or a newline inside quotes.
    for value in ('"' * (3 * CHUNK_BYTES), "\n" * (3 * CHUNK_BYTES)):
        rows = [["a"], [value], ["b", value], ["c"]]
        text = csv_text(rows)
        assert_whole_rows(text, list(row_ends(pieces_of(text, random.Random(2)))), rows)
