"""Credential files (the KEK, the API's bearer tokens): read only when nobody else may.

One rule for every credential: the file is a regular file that no one but its owner
and this process can access.  Mode bits alone cannot say that under systemd: with
``DynamicUser=``, ``LoadCredential=`` writes each credential root-owned with mode 0400
and grants the service user read access through a POSIX ACL entry, and ``stat`` then
shows the ACL mask in the group bits (mode 0440) although no group can read the file.
So when a file carries an access ACL, the ACL is what is checked: the owning group,
named groups and other must have no access, and a named user only if it is us.

A problem with the file is a :class:`ConfigError` (exit 2): the operator fixes a file.
Messages name the file and the problem, never its content.
"""

from __future__ import annotations

import errno
import os
import stat
import struct

from sealfleet.errors import ConfigError

_ACL_XATTR = "system.posix_acl_access"
_ACL_VERSION = 2
_ACL_ENTRY = struct.Struct("<HHI")  # tag, permissions, qualifier (uid or gid)
_USER_OBJ, _USER, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_NO_ACL = {errno.ENODATA, errno.EOPNOTSUPP, errno.ENOTSUP}


def read_private(path: str | os.PathLike[str], *, limit: int, label: str) -> bytes:
    """Up to *limit* bytes of the credential file *path*.

    Errors read ``<label> <path>: <problem>`` (e.g. ``key-encryption key /etc/kek:
    mode 0644 lets group or others access it; run: chmod 600 /etc/kek``).
    """
    source = os.fspath(path)
    try:
        with open(source, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ConfigError(f"{label} {source}: not a regular file")
            problem = _shared_access(handle.fileno(), info.st_mode, source)
            if problem is not None:
                raise ConfigError(f"{label} {source}: {problem}")
            return handle.read(limit)
    except OSError as exc:
        raise ConfigError(f"{label} {source}: cannot read "
                          f"({exc.strerror or type(exc).__name__})") from exc


def _shared_access(fd: int, mode: int, path: str) -> str | None:
    """Why someone besides the owner and this process may access the file, or None."""
    try:
        acl = os.getxattr(fd, _ACL_XATTR)
    except OSError as exc:
        if exc.errno not in _NO_ACL:
            raise
        acl = b""
    if not acl:
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            return (f"mode {stat.S_IMODE(mode):04o} lets group or others access it; "
                    f"run: chmod 600 {path}")
        return None
    return _acl_problem(acl, path)


def _acl_problem(acl: bytes, path: str) -> str | None:
    version = struct.unpack_from("<I", acl)[0] if len(acl) >= 4 else None
    if version != _ACL_VERSION or (len(acl) - 4) % _ACL_ENTRY.size:
        return f"has an access ACL this program cannot read; run: setfacl -b {path}"
    entries = [_ACL_ENTRY.unpack_from(acl, offset)
               for offset in range(4, len(acl), _ACL_ENTRY.size)]
    mask = next((perm for tag, perm, _ in entries if tag == _MASK), 0o7)
    me = os.geteuid()
    for tag, perm, qualifier in entries:
        effective = perm if tag == _OTHER else perm & mask
        shared = (tag in (_GROUP_OBJ, _GROUP, _OTHER)
                  or (tag == _USER and qualifier != me))
        if shared and effective:
            return ("its ACL lets other users or groups access it; "
                    f"run: setfacl -b {path} && chmod 600 {path}")
    return None
