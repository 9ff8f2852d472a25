"""The embedded PostgreSQL as a service of its own: the compose demo database.

``docker-compose.demo-db.yml`` runs this in the server image, for operators who have no
database yet but want the server to reach one through the replaced system's ``DB_*`` names,
as it will reach theirs. It is the embedded PostgreSQL (``server.embedded.postgres``: its
own binaries, a SELECT-only ``dataexec_query`` role, the demo tables loaded once), started
under its own state dir on a fixed port with the query role's password from the
environment, and kept in the foreground until SIGTERM. It listens on 127.0.0.1 only, which
the server, on the host's network, reaches. ``<state dir>/ready`` exists while it serves
with the demo tables loaded (the service's health check).

    python -m server.embedded.standalone --state-dir DIR --port PORT    # password: DB_PASSWORD
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from server.embedded.postgres import DATABASE, QUERY_ROLE, EmbeddedPostgres
from server.errors import DataExecError

PASSWORD_ENV = "DB_PASSWORD"  # not an argument: arguments show in every `ps`

log = logging.getLogger(__name__)


def seed(state_dir: Path, port: int, password: str) -> None:
    """Pin the cluster's port and the query role's password before it starts (the
    embedded PostgreSQL keeps both in postgres.json and applies them at every start)."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    secrets_file = state_dir / "postgres.json"
    config = json.loads(secrets_file.read_text()) if secrets_file.exists() else {}
    config["port"] = port
    config.setdefault("passwords", {})[QUERY_ROLE] = password
    tmp = secrets_file.with_name("postgres.json.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(config, fh)
    os.replace(tmp, secrets_file)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m server.embedded.standalone", description=__doc__
    )
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    password = os.environ.get(PASSWORD_ENV, "")
    if len(password) < 8:
        print(f"standalone: set {PASSWORD_ENV} (8 characters or more)", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    seed(args.state_dir, args.port, password)
    ready = args.state_dir / "ready"
    ready.unlink(missing_ok=True)
    database = EmbeddedPostgres(args.state_dir, demo_data=True)
    try:
        database.start()
    except DataExecError as exc:
        print(f"standalone: {exc.message}", file=sys.stderr)
        return 1
    ready.touch()
    log.info(
        "demo database ready: postgresql://%s@127.0.0.1:%d/%s (%s)",
        QUERY_ROLE,
        database.port,
        DATABASE,
        ", ".join(f"{k} {v:.1f} s" for k, v in database.timings.items()),
    )
    stop.wait()
    ready.unlink(missing_ok=True)
    database.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
