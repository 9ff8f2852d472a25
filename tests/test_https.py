"""HTTPS served by DataExec itself: ``dataexec serve`` with ``tls_cert_file`` and
``tls_key_file`` (a certificate of the tests' own CA, made with openssl), called over https
with that CA; HSTS on its answers; both files or neither; files it cannot use stop the start.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
from pathlib import Path

import httpx
import pytest
from dataexec_testing.serve import serve_env, start_serve
from dataexec_testing.tls import TlsFiles, make_tls_files

from server.config import load_settings
from server.errors import ConfigError


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("https"), client_cn="dataexec-client")


def https_env(tmp_path: Path, cert: Path, key: Path) -> dict[str, str]:
    env = serve_env(tmp_path)
    env.update(
        DATAEXEC_TLS_CERT_FILE=str(cert),
        DATAEXEC_TLS_KEY_FILE=str(key),
        DATAEXEC_POOLS__DEFAULT__MIN_IDLE="0",
    )
    return env


async def test_the_server_serves_https_with_hsts(tls: TlsFiles, tmp_path: Path) -> None:
    served = await start_serve(https_env(tmp_path, tls.server_cert, tls.server_key))
    try:
        assert served.url.startswith("https://127.0.0.1:")
        trusted = ssl.create_default_context(cafile=str(tls.ca_cert))
        headers = {"Authorization": f"Bearer {served.token}"}
        async with httpx.AsyncClient(
            base_url=served.url, verify=trusted, headers=headers, timeout=30
        ) as https:
            health = await https.get("/health")
            assert health.status_code == 200
            assert health.headers["Strict-Transport-Security"].startswith("max-age=")
            answer = await https.post("/execute", json={"language": "sql", "code": "SELECT 1"})
            assert answer.status_code == 200, answer.text
            assert "Strict-Transport-Security" in answer.headers
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as untrusting:
            with pytest.raises(httpx.ConnectError):  # the test CA is not the system's
                await untrusting.get("/health")
        plain = served.url.replace("https://", "http://")
        async with httpx.AsyncClient(base_url=plain, timeout=30) as http:
            with pytest.raises(httpx.TransportError):
                await http.get("/health")
    finally:
        assert await served.stop() == 0


def test_tls_files_come_in_pairs_and_must_exist(tls: TlsFiles, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env={"DATAEXEC_TLS_CERT_FILE": str(tls.server_cert)})
    assert caught.value.problems == ["tls_cert_file and tls_key_file: give both or neither"]
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(ConfigError) as caught:
        load_settings(env={"DATAEXEC_TLS_CERT_FILE": missing, "DATAEXEC_TLS_KEY_FILE": missing})
    assert caught.value.problems == [
        f"tls_cert_file: no such file: {missing!r}",
        f"tls_key_file: no such file: {missing!r}",
    ]


async def test_a_key_that_does_not_match_stops_the_start(tls: TlsFiles, tmp_path: Path) -> None:
    env = https_env(tmp_path, tls.server_cert, tls.client_key)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "serve", env=env, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2
    assert b"tls_cert_file and tls_key_file: cannot be used" in stderr
