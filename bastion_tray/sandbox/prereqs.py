"""Which Debian packages the sandbox still needs, and where its tools live.

sshd and mariadbd sit in /usr/sbin, which a non-root PATH often lacks, so the sbin directories
are searched too.
"""

from __future__ import annotations

import os
import shutil

_SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")

# (tool names, any of which will do, Debian package that ships them)
_REQUIREMENTS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("sshd",), "openssh-server"),
    (("mariadbd", "mysqld"), "mariadb-server"),
    (("mariadb-install-db", "mysql_install_db"), "mariadb-server"),
    (("mariadb", "mysql"), "mariadb-client"),
    (("ssh",), "openssh-client"),
    (("ssh-keygen",), "openssh-client"),
)

SFTP_SERVER_CANDIDATES = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server")


def find_tool(*names: str) -> str | None:
    """Absolute path of the first of `names` found on PATH or in the sbin directories."""
    search = os.pathsep.join([os.environ.get("PATH", ""), *_SBIN])
    for name in names:
        found = shutil.which(name, path=search)
        if found:
            return os.path.abspath(found)
    return None


def sftp_server() -> str | None:
    return next((p for p in SFTP_SERVER_CANDIDATES if os.access(p, os.X_OK)), None)


def missing_prerequisites() -> list[str]:
    """Debian packages to install before the sandbox can start; empty when all is there."""
    missing: list[str] = []
    for names, package in _REQUIREMENTS:
        if find_tool(*names) is None and package not in missing:
            missing.append(package)
    if sftp_server() is None and "openssh-server" not in missing:
        missing.append("openssh-sftp-server")
    return missing
