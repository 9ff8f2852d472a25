"""Tokens kept as hashes: ``sha256:<hex>`` in the config, ``dataexec hash-token``, and the
authenticator that takes both forms (several per tenant) and never takes a hash as a token."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from server.auth import OPERATOR, Authenticator, hash_token
from server.config import load_settings
from server.errors import ConfigError, Unauthorized

PLAIN = "acme-plaintext-token-0123456789"
HASHED = "acme-hashed-token-9876543210"
OPERATOR_PLAIN = "operator-token-0123456789abcdef"


def settings_with(tmp_path: Path, text: str) -> Authenticator:
    config = tmp_path / "c.toml"
    config.write_text(text)
    return Authenticator(load_settings(env={}, config_file=config))


def test_a_tenant_takes_plaintext_and_hashed_tokens_and_no_hash_as_a_token(
    tmp_path: Path,
) -> None:
    upper_hex = "sha256:" + hash_token(HASHED).removeprefix("sha256:").upper()
    auth = settings_with(
        tmp_path,
        f'operator_token = "{hash_token(OPERATOR_PLAIN)}"\n'
        f'[tenants.acme]\ntokens = ["{PLAIN}", "{upper_hex}"]\n',
    )
    assert auth.authenticate(f"Bearer {PLAIN}").name == "acme"
    assert auth.authenticate(f"Bearer {HASHED}").name == "acme"
    assert auth.authenticate(f"Bearer {OPERATOR_PLAIN}") is OPERATOR
    for presented in (hash_token(HASHED), hash_token(OPERATOR_PLAIN), hash_token(PLAIN)):
        with pytest.raises(Unauthorized):
            auth.authenticate(f"Bearer {presented}")


def test_a_malformed_hash_and_a_token_shared_through_its_hash_are_refused(
    tmp_path: Path,
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        f'[tenants.a]\ntokens = ["sha256:abc"]\n[tenants.b]\ntokens = ["{PLAIN}"]\n'
        f'[tenants.c]\ntokens = ["{hash_token(PLAIN)}"]\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(env={}, config_file=config)
    assert caught.value.problems == [
        "tenants.a.tokens: sha256: takes 64 hex digits",
        "tenants.c.tokens: a token is shared with tenant 'b'",
    ]


def test_hash_token_prints_the_hash_of_the_token_on_stdin() -> None:
    command = [sys.executable, "-m", "server", "hash-token"]
    done = subprocess.run(command, input=f"{PLAIN}\n", capture_output=True, text=True, check=False)
    assert (done.returncode, done.stdout) == (0, hash_token(PLAIN) + "\n")
    short = subprocess.run(command, input="short\n", capture_output=True, text=True, check=False)
    assert short.returncode == 2 and "at least 16 characters" in short.stderr
