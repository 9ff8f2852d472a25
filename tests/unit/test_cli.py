"""The command line before any server starts: ``--version``, and bad configuration.

Bad values (``DATAEXEC_*``, the replaced system's ``DB_*`` names, a pool setting) end
``dataexec serve`` with exit status 2 and a message naming every one of them, never a
traceback. Starting and stopping real servers is in ``tests/test_lifecycle.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_version_and_bad_config_exit_with_clear_messages(tmp_path: Path) -> None:
    version = subprocess.run(
        [sys.executable, "-m", "server", "--version"], capture_output=True, text=True
    )
    assert version.returncode == 0 and version.stdout.startswith("dataexec ")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DATAEXEC_", "AGENT_"))},
        "DATAEXEC_STATE_DIR": str(tmp_path / "state"),
        "DATAEXEC_SANDBOX": "bubblewrap",
        "DATAEXEC_PORT": "eighty",
        "DB_HOST": "db",
        "DB_USER": "u",
        "DB_NAME": "d",
        "DB_SSL_MODE": "sometimes",
        "DATAEXEC_POOLS__DEFAULT__MEMORY_MB": "1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "server", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    for name in ("DATAEXEC_PORT", "DB_SSL_MODE", "DATAEXEC_POOLS__DEFAULT__MEMORY_MB"):
        assert name in result.stderr
    assert "Traceback" not in result.stderr
