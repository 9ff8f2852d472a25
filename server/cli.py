"""The ``dataexec`` command: serve, build-image, kernel-env, check-config, hash-token,
--version."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import signal
import socket
import sys
from typing import TYPE_CHECKING, Any

from server import __version__
from server.auth import hash_token
from server.config import TOKEN_HASH, Settings, load_settings, with_default_tenant
from server.config.reload import ConfigSource
from server.errors import ConfigError, DataExecError
from server.platform import platform_problems
from server.telemetry.logs import configure_logging

if TYPE_CHECKING:
    from server.runtime import Runtime

log = logging.getLogger("dataexec")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dataexec", description=__doc__)
    parser.add_argument("--version", action="version", version=f"dataexec {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP server")
    for cmd in (
        serve,
        commands.add_parser("build-image", help="build the kernel image offline"),
        commands.add_parser("kernel-env", help="create the bubblewrap kernel environment"),
        commands.add_parser("check-config", help="validate the configuration and exit"),
    ):
        cmd.add_argument("--config", help="TOML config file (or DATAEXEC_CONFIG)")
    commands.choices["build-image"].add_argument(
        "--server",
        action="store_true",
        help="also build the server image for docker-compose.yml (docs/deploy.md)",
    )
    commands.add_parser(
        "hash-token",
        help="read a token from stdin and print its sha256:<hex> form, to configure instead",
    )
    serve.add_argument("--host", help="listen address (default 127.0.0.1, or DATAEXEC_HOST)")
    serve.add_argument("--port", type=int, help="listen port (default 8001, or DATAEXEC_PORT)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "hash-token":
        return print_token_hash()
    level = os.environ.get("DATAEXEC_LOG_LEVEL", "INFO")
    configure_logging(level, "auto", sys.stderr)
    flags = {"host": getattr(args, "host", None), "port": getattr(args, "port", None)}
    try:
        settings = load_settings(config_file=args.config, overrides=flags)
        configure_logging(level, settings.log_format, sys.stderr)
        if args.command == "check-config":
            if problems := platform_problems(settings):
                raise ConfigError(problems)
            print("configuration is valid")
            return 0
        if args.command == "build-image" and args.server:
            from server.ops.server_image import build_server_image

            print(build_server_image(settings))
            return 0
        if args.command == "build-image":
            from server.ops.image import build_image

            print(build_image(settings))
            return 0
        if args.command == "kernel-env":
            from server.ops.kernel_env import make_kernel_env

            print(make_kernel_env(settings))
            return 0
        source = ConfigSource(args.config, dict(os.environ), flags)
        return asyncio.run(serve(with_default_tenant(settings), source))
    except ConfigError as exc:
        print(f"dataexec: {exc.message}", file=sys.stderr)
        return 2
    except DataExecError as exc:
        print(f"dataexec: {exc.message}", file=sys.stderr)
        return 1


def print_token_hash() -> int:
    """Print the ``sha256:`` form of the token on stdin (asked for without echo on a tty)."""
    text = getpass.getpass("token: ") if sys.stdin.isatty() else sys.stdin.read()
    token = text.strip()
    if len(token) < 16:
        print("dataexec: a token is at least 16 characters", file=sys.stderr)
        return 2
    print(hash_token(token))
    return 0


async def serve(settings: Settings, source: ConfigSource | None = None) -> int:
    """Run the server until SIGTERM or SIGINT, then stop gracefully; SIGHUP reloads the
    configuration from ``source``."""
    import tornado.netutil

    from server.app import make_metrics_server, make_server
    from server.runtime import Runtime

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runtime = Runtime(settings, source=source)
    reloads: set[asyncio.Task[Any]] = set()

    def reload() -> None:
        task = asyncio.ensure_future(reload_on_sighup(runtime))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)
    http = make_server(settings, runtime)  # before start: a TLS file it cannot use stops here
    await runtime.start()
    sockets = tornado.netutil.bind_sockets(settings.port, settings.host)
    http.add_sockets(sockets)
    if settings.metrics_port:  # GET /metrics without a token, for a scraper
        metrics_http = make_metrics_server(settings, runtime)
        sockets += tornado.netutil.bind_sockets(settings.metrics_port, settings.host)
        metrics_http.add_sockets(sockets[-1:])
        log.info("metrics on port %d: GET /metrics needs no token there", settings.metrics_port)
    runtime.announce()  # registers in the background, now that the platform can reach us
    port = sockets[0].getsockname()[1]
    host = settings.host if ":" not in settings.host else f"[{settings.host}]"
    url = f"{'https' if settings.tls_cert_file else 'http'}://{host}:{port}"
    token = settings.tenants["default"].tokens[0] if "default" in settings.tenants else "<token>"
    if TOKEN_HASH.fullmatch(token):  # configured as a hash: the operator has the token
        token = "<token>"
    print(
        f"DataExec {__version__} listening on {url} (sandbox: {runtime.sandbox.name})\n"
        f"token: {token}\n"
        f"try:   curl -s -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json'"
        f' -d \'{{"code": "pd.DataFrame({{\\"x\\": range(3)}})"}}\' {url}/execute',
        flush=True,
    )
    await stop.wait()
    log.info("stopping: no new connections; running cells get %.0f s", settings.shutdown_grace_s)
    http.stop()
    if settings.metrics_port:
        metrics_http.stop()
    await runtime.close()
    await http.close_all_connections()
    for sock in sockets:
        if sock.family != socket.AF_UNIX:
            sock.close()
    log.info("stopped")
    return 0


async def reload_on_sighup(runtime: Runtime) -> None:
    """``Runtime.reload`` for SIGHUP: its outcome is logged, never raised."""
    try:
        await runtime.reload()
    except ConfigError:
        pass  # refused: Runtime.reload logged every problem, the old configuration stays
    except Exception:
        log.exception("configuration reload failed; the old configuration stays")
