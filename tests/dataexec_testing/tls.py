"""Test certificates for the external databases, made with the ``openssl`` command line.

One run makes, in one directory (keys 0600):

- ``ca.crt``/``ca.key``: the test CA that signs everything below;
- ``server.crt``/``server.key``: CN ``localhost``, SAN ``DNS:localhost, IP:127.0.0.1``, so
  ``sslmode=verify-full`` works against ``127.0.0.1`` and ``localhost``;
- ``client.crt``/``client.key``: CN = the reader role (``dataexec_reader``), for client
  certificate authentication;
- ``wrong-ca.crt``: an unrelated CA (verification against it must fail), and
  ``wrong-client.crt``/``wrong-client.key``: a client certificate with the same CN signed
  by that wrong CA (the servers must refuse it).

EC P-256 keys: instant to make, and every client here (libpq, MariaDB Connector/C) takes
them. The ``openssl`` command rather than the ``cryptography`` package, which is not in the
venv (``scripts/install --test`` installs ``openssl``).
"""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

_DAYS = "3650"


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files of one run's test PKI (see the module docstring)."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_cn: str
    wrong_ca_cert: Path
    wrong_client_cert: Path
    wrong_client_key: Path


def make_tls_files(directory: Path, client_cn: str) -> TlsFiles:
    """Make the test CA, the server and client certificates and the wrong CA in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(
        directory=directory,
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
        client_cn=client_cn,
        wrong_ca_cert=directory / "wrong-ca.crt",
        wrong_client_cert=directory / "wrong-client.crt",
        wrong_client_key=directory / "wrong-client.key",
    )
    wrong_ca_key = directory / "wrong-ca.key"
    _make_ca(files.ca_cert, files.ca_key, "DataExec test CA")
    _make_ca(files.wrong_ca_cert, wrong_ca_key, "DataExec wrong CA")
    _make_signed(
        files.server_cert,
        files.server_key,
        "localhost",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        files.ca_cert,
        files.ca_key,
    )
    _make_signed(
        files.client_cert,
        files.client_key,
        client_cn,
        "extendedKeyUsage=clientAuth\n",
        files.ca_cert,
        files.ca_key,
    )
    _make_signed(
        files.wrong_client_cert,
        files.wrong_client_key,
        client_cn,
        "extendedKeyUsage=clientAuth\n",
        files.wrong_ca_cert,
        wrong_ca_key,
    )
    for leftover in directory.glob("*.csr"):
        leftover.unlink()
    for key in directory.glob("*.key"):
        key.chmod(0o600)
    return files


def _openssl(*args: str | Path, stdin: str | None = None) -> None:
    result = subprocess.run(
        ["openssl", *map(str, args)], input=stdin, capture_output=True, text=True, check=False
    )
    if result.returncode:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()}")


def _new_key(key: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key)


def _make_ca(cert: Path, key: Path, cn: str) -> None:
    _new_key(key)
    _openssl(
        "req", "-x509", "-new", "-key", key, "-out", cert, "-days", _DAYS,
        "-subj", f"/CN={cn}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip


def _make_signed(
    cert: Path, key: Path, cn: str, extensions: str, ca_cert: Path, ca_key: Path
) -> None:
    _new_key(key)
    csr = cert.with_suffix(".csr")
    _openssl("req", "-new", "-key", key, "-out", csr, "-subj", f"/CN={cn}")
    ext = cert.with_suffix(".ext")
    ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n" + extensions)
    try:
        _openssl(
            "x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-out", cert,
            "-days", _DAYS, "-set_serial", str(secrets.randbits(63)), "-extfile", ext,
        )  # fmt: skip
    finally:
        ext.unlink(missing_ok=True)
