"""Histograms of a profiled column: values mapped to numbers, ten equal-width buckets.

``Axis.for_kind`` picks how a column's values become numbers and back: integers (whole
buckets with an inclusive end, one per value when the range is small), floats, dates (days
since the epoch) and timestamps (seconds since the epoch, rendered aware or naive as the
column's values are).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa

BUCKETS = 10
INT64_MAX = np.iinfo(np.int64).max


class Axis:
    """Maps a column's values to numbers and back, and buckets them."""

    def __init__(
        self,
        kind: str,
        to_number: Callable[[Any], float | None],
        render: Callable[[float], Any],
        integer: bool,
    ) -> None:
        self.kind, self._to_number, self.render, self.integer = kind, to_number, render, integer

    @classmethod
    def for_kind(cls, kind: str, sample: Sequence[Any], aware: bool = False) -> Axis:
        if kind == "integer":
            return cls(kind, _as_int, int, True)
        if kind == "number":
            return cls(kind, _as_float, float, False)
        if kind == "date":
            return cls(kind, _date_number, _render_date, True)
        aware = aware or any(_is_aware(v) for v in sample[:50])
        return cls(kind, _timestamp_number, _render_aware if aware else _render_naive, False)

    def points(self, values: Sequence[Any]) -> list[Any]:
        """The values as numbers, dropping those that are not of the column's type."""
        out = []
        for value in values:
            number = self._to_number(value)
            if number is not None:
                out.append(number)
        return out

    def array(self, values: pa.Array) -> np.ndarray:
        """The non-null values as numbers, converted in bulk when their Arrow type allows."""
        kind, type_ = self.kind, values.type
        with contextlib.suppress(pa.ArrowException, TypeError, ValueError):
            if kind == "integer" and pa.types.is_integer(type_):
                numbers = values.to_numpy(zero_copy_only=False)
                if numbers.dtype == np.uint64 and len(numbers) and numbers.max() > INT64_MAX:
                    return self._past_int64(numbers)
                return numbers.astype(np.int64)
            if kind == "number" and (
                pa.types.is_integer(type_)
                or pa.types.is_floating(type_)
                or pa.types.is_decimal(type_)
            ):
                array = values.cast(pa.float64()).to_numpy(zero_copy_only=False)
                return array[np.isfinite(array)]
            if kind in ("date", "timestamp") and (
                pa.types.is_integer(type_) or pa.types.is_floating(type_)
            ):  # days / seconds since the epoch, as _read_by_copy asks PostgreSQL for them
                array = values.cast(pa.float64()).to_numpy(zero_copy_only=False)
                array = array[np.isfinite(array)]
                return array.astype(np.int64) if kind == "date" else array
            if kind == "date" and pa.types.is_date(type_):
                days = values.cast(pa.date32()).cast(pa.int32())
                return days.to_numpy(zero_copy_only=False).astype(np.int64)
            if kind == "timestamp" and pa.types.is_timestamp(type_):
                micros = values.cast(pa.timestamp("us", type_.tz)).cast(pa.int64())
                return micros.to_numpy(zero_copy_only=False) / 1e6
        points = self.points(values.to_pylist())
        try:
            return np.asarray(points, dtype=np.int64 if self.integer else np.float64)
        except OverflowError:
            return self._past_int64(points)

    def _past_int64(self, points: Sequence[Any]) -> np.ndarray:
        """Whole numbers past int64 (MySQL's BIGINT UNSIGNED): floats from here on."""
        self.integer, self.render = False, float
        return np.asarray(points, dtype=np.float64)

    def histogram(
        self,
        lo: float,
        hi: float,
        values: np.ndarray,
        masses: np.ndarray,
        pieces: Sequence[tuple[float, float, float]],
    ) -> list[dict[str, Any]]:
        """Equal-width buckets over [lo, hi]: masses at values, plus uniform pieces."""
        if self.integer:
            span = int(hi) - int(lo) + 1
            width = max(1, math.ceil(span / BUCKETS)) if span > 2 * BUCKETS else 1
            starts = list(range(int(lo), int(hi) + 1, width))
            edges = [float(s) for s in starts] + [float(starts[-1] + width)]
        elif hi > lo:
            width_f = (hi - lo) / BUCKETS
            edges = [lo + i * width_f for i in range(BUCKETS)] + [hi]
        else:
            edges = [lo, hi]
        counts = np.zeros(len(edges) - 1)
        inner = np.asarray(edges[1:-1], dtype=np.float64)
        if len(values):
            np.add.at(counts, np.searchsorted(inner, values, side="right"), masses)
        for a, b, mass in pieces:
            if self.integer:
                b = b + 1  # whole numbers a..b cover [a, b + 1)
            if b <= a:
                counts[int(np.searchsorted(inner, a, side="right"))] += mass
                continue
            for i in range(len(counts)):
                left, right = edges[i], edges[i + 1]
                if i == len(counts) - 1 and not self.integer:
                    right = max(right, b)
                overlap = min(b, right) - max(a, left)
                if overlap > 0:
                    counts[i] += mass * overlap / (b - a)
        buckets = []
        for i, count in enumerate(counts):
            start, end = edges[i], edges[i + 1]
            if self.integer:
                end = end - 1
            buckets.append(
                {
                    "bucket_start": self.render(start),
                    "bucket_end": self.render(end),
                    "count": int(round(count)),
                }
            )
        return buckets


def _is_aware(value: Any) -> bool:
    if isinstance(value, dt.datetime):
        return value.tzinfo is not None
    return isinstance(value, str) and ("+" in value[10:] or value.endswith("Z"))


def _as_int(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    number = _as_float(value)
    return int(number) if number is not None and number.is_integer() else None


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float | int | Decimal | str):
        try:
            number = float(value)
        except (TypeError, ValueError):
            return None
        return number if math.isfinite(number) else None
    return None


_EPOCH = dt.datetime(1970, 1, 1)


def _timestamp_number(value: Any) -> float | None:
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            return value.timestamp()
        return (value - _EPOCH).total_seconds()
    if isinstance(value, dt.date):
        return (dt.datetime(value.year, value.month, value.day) - _EPOCH).total_seconds()
    return None


def _render_aware(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat()


def _render_naive(seconds: float) -> str:
    return (_EPOCH + dt.timedelta(seconds=seconds)).isoformat()


_EPOCH_DAY = dt.date(1970, 1, 1)


def _date_number(value: Any) -> float | None:
    """Days since 1970-01-01 (as Arrow's date32 counts them)."""
    if isinstance(value, str):
        try:
            value = dt.date.fromisoformat(value[:10])
        except ValueError:
            return None
    if isinstance(value, dt.datetime):
        value = value.date()
    if isinstance(value, dt.date):
        return (value - _EPOCH_DAY).days
    return None


def _render_date(number: float) -> str:
    return (_EPOCH_DAY + dt.timedelta(days=int(number))).isoformat()
