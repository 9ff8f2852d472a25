"""Who runs the embedded PostgreSQL, and how it reaches its files without widening modes.

PostgreSQL refuses to run as root. When the server is root, the cluster runs as a dedicated
system account, ``dataexec-postgres`` (``useradd --system``, no home, no login shell), made
on first start; otherwise as the server's own user. The default state dir of root,
``/root/.local/state/dataexec``, sits below ``/root`` (0700), which that account cannot
traverse. Instead of widening modes we add one POSIX ACL entry,
``user:dataexec-postgres:--x`` (search only: no listing, no reading), to exactly those
ancestors of a path that the account cannot search (``grant_search``); nobody else gains
anything. Also here: telling whether a recorded process is still the one that recorded
itself (``alive``), since pids are reused.
"""

from __future__ import annotations

import errno
import logging
import os
import pwd
import shutil
import stat
import struct
import subprocess
from pathlib import Path
from typing import Any

from server.errors import DataExecError

log = logging.getLogger(__name__)

PG_OS_USER = "dataexec-postgres"
_ACL_XATTR = "system.posix_acl_access"
_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_GROUP, _ACL_MASK, _ACL_OTHER = (
    0x01,
    0x02,
    0x04,
    0x08,
    0x10,
    0x20,
)
_ACL_UNDEFINED_ID = 0xFFFFFFFF


def os_user() -> tuple[int | None, int | None]:
    """The uid/gid PostgreSQL runs as when we are root (None, None: as ourselves)."""
    if os.geteuid() != 0:
        return None, None
    try:
        entry = pwd.getpwnam(PG_OS_USER)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        result = subprocess.run(
            [
                useradd,
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                "--comment",
                "DataExec embedded PostgreSQL",
                PG_OS_USER,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        try:
            entry = pwd.getpwnam(PG_OS_USER)
        except KeyError:
            raise DataExecError(
                f"cannot create the system user {PG_OS_USER!r} that runs the embedded "
                f"PostgreSQL: {result.stderr.strip() or 'useradd failed'}"
            ) from None
        log.info("created system user %s (uid %d)", PG_OS_USER, entry.pw_uid)
    return entry.pw_uid, entry.pw_gid


def give(path: Path, uid: int | None, gid: int | None) -> None:
    """Hand a file or directory to PostgreSQL's OS user (nothing to do when that is us)."""
    if uid is not None:
        os.chown(path, uid, -1 if gid is None else gid)


def process_start(pid: int) -> str | None:
    """The start time of a process (clock ticks since boot), to tell a reused pid apart."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw.rsplit(")", 1)[1].split()[19]


def alive(user: dict[str, Any]) -> bool:
    pid = user.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return user.get("started") is None or process_start(pid) == user.get("started")


def _can_search(st: os.stat_result, uid: int, gids: set[int]) -> bool:
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in gids:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def grant_search(target: Path, uid: int, gid: int | None) -> None:
    """Let ``uid`` traverse every ancestor of ``target`` (an ACL entry, search only)."""
    gids = {gid} if gid is not None else set()
    for directory in reversed(target.absolute().parents):
        st = directory.stat()
        if _can_search(st, uid, gids) and not _has_acl(directory):
            continue
        try:
            _add_acl_search(directory, uid, st)
        except OSError as exc:
            raise DataExecError(
                f"the embedded PostgreSQL runs as {PG_OS_USER!r}, which cannot reach "
                f"{target} (no search permission on {directory}, and an ACL could not be "
                f"added: {exc.strerror}); set state_dir to a directory that user can reach, "
                "e.g. /var/lib/dataexec"
            ) from exc


def _has_acl(directory: Path) -> bool:
    try:
        return len(os.getxattr(directory, _ACL_XATTR)) > 4
    except OSError:
        return False


def _add_acl_search(directory: Path, uid: int, st: os.stat_result) -> None:
    """Add (or extend) the entry ``user:<uid>:--x`` of a directory's access ACL."""
    try:
        raw = os.getxattr(directory, _ACL_XATTR)
        entries = [struct.unpack_from("<HHI", raw, 4 + 8 * i) for i in range((len(raw) - 4) // 8)]
    except OSError as exc:
        if exc.errno not in (errno.ENODATA, errno.EOPNOTSUPP):  # no ACL yet / none possible
            raise
        mode = st.st_mode
        entries = [
            (_ACL_USER_OBJ, (mode >> 6) & 7, _ACL_UNDEFINED_ID),
            (_ACL_GROUP_OBJ, (mode >> 3) & 7, _ACL_UNDEFINED_ID),
            (_ACL_OTHER, mode & 7, _ACL_UNDEFINED_ID),
        ]
    mine = [e for e in entries if e[0] == _ACL_USER and e[2] == uid]
    old_mask = [e[1] for e in entries if e[0] == _ACL_MASK]
    if mine and mine[0][1] & 1 and old_mask and old_mask[0] & 1:
        return  # already effective (a chmod may clear the mask: then we re-add it below)
    perm = (mine[0][1] if mine else 0) | 1
    entries = [e for e in entries if not (e[0] == _ACL_USER and e[2] == uid) and e[0] != _ACL_MASK]
    entries.append((_ACL_USER, perm, uid))
    if old_mask:  # keep what a chmod set the group class to; add search only
        mask = old_mask[0] | 1
    else:  # a first ACL: the mask leaves every existing permission as it was
        mask = 1 | ((st.st_mode >> 3) & 7)
    entries.append((_ACL_MASK, mask, _ACL_UNDEFINED_ID))
    entries.sort(key=lambda e: (e[0], e[2]))
    data = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)
    os.setxattr(directory, _ACL_XATTR, data)
    log.info("granted %s search (ACL --x) on %s", PG_OS_USER, directory)
