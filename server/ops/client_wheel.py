"""The analysts' client as a wheel, built from the copy the server runs.

Analysts re-running an exported notebook need ``dataexec_kernel`` (the helpers the notebook's
``%load_ext dataexec_kernel`` loads) and ``dataexec_client`` (which plugs a DataExec server
or a database into them) in their own Jupyter, and they are not on PyPI: the server hands
them out (``GET /client/<wheel>``), so the client always matches the server that exported
the notebook. The wheel is built in memory on first use (pure Python, a zip with
``*.dist-info``); its metadata mirrors kernel_image/pyproject.toml, which a test checks.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.util
import io
import zipfile
from pathlib import Path

DISTRIBUTION = "dataexec_kernel"
PACKAGES = ("dataexec_kernel", "dataexec_client")
REQUIRES = ("pandas>=2.0", "pyarrow>=14")
EXTRAS = {
    "database": ("SQLAlchemy>=2.0",),
    "postgresql": (
        "SQLAlchemy>=2.0",
        "psycopg2-binary",
        "adbc-driver-manager",
        "adbc-driver-postgresql",
    ),
    "mysql": ("SQLAlchemy>=2.0", "mysqlclient"),
    "adbc": ("adbc-driver-manager",),
}
SUMMARY = (
    "sql(), load(), conn and %%sql of DataExec kernels, for any Jupyter: through a DataExec "
    "server or a database"
)
# Fixed times keep the wheel byte-for-byte the same for the same package.
ZIP_TIME = (2020, 1, 1, 0, 0, 0)


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations
    return Path(list(spec.submodule_search_locations)[0])


def version() -> str:
    import dataexec_kernel

    return dataexec_kernel.__version__


def filename() -> str:
    return f"{DISTRIBUTION}-{version()}-py3-none-any.whl"


def _metadata() -> str:
    lines = [
        "Metadata-Version: 2.1",
        "Name: dataexec-kernel",
        f"Version: {version()}",
        f"Summary: {SUMMARY}",
        "License: Apache-2.0",
        "Requires-Python: >=3.11",
        *(f"Requires-Dist: {r}" for r in REQUIRES),
    ]
    for extra, requirements in EXTRAS.items():
        lines.append(f"Provides-Extra: {extra}")
        lines += [f'Requires-Dist: {r}; extra == "{extra}"' for r in requirements]
    return "\n".join(lines) + "\n"


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


@functools.cache
def build() -> bytes:
    """The wheel's bytes (built once per process)."""
    files = {
        f"{name}/{path.relative_to(package).as_posix()}": path.read_bytes()
        for name in PACKAGES
        for package in [_package_dir(name)]
        for path in sorted(package.rglob("*"))
        if path.is_file() and path.suffix in (".py", ".conf")
    }
    info = f"{DISTRIBUTION}-{version()}.dist-info"
    files[f"{info}/METADATA"] = _metadata().encode()
    files[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: dataexec\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = [_record_line(name, data) for name, data in files.items()] + [f"{info}/RECORD,,"]
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in files.items():
            entry = zipfile.ZipInfo(name, ZIP_TIME)
            entry.external_attr = 0o644 << 16
            wheel.writestr(entry, data, zipfile.ZIP_DEFLATED)
    return buffer.getvalue()
