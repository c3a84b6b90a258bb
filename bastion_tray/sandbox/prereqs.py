"""Which Debian packages the sandbox's real peers still need, and where their tools live.

sshd and mariadbd sit in /usr/sbin, which a non-root PATH often lacks, so the sbin directories
are searched too. Without them the sandbox can still run on its embedded stand-ins
(standins.py); only moto is always needed, and that is a pip dependency.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence

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

# which real peer each package is for: a missing one means that peer needs its stand-in
SSH_PACKAGES = ("openssh-server", "openssh-client", "openssh-sftp-server")
DATABASE_PACKAGES = ("mariadb-server", "mariadb-client")

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
    """Debian packages to install before the sandbox can use its real peers (OpenSSH sshd,
    MariaDB); empty when all is there."""
    missing: list[str] = []
    for names, package in _REQUIREMENTS:
        if find_tool(*names) is None and package not in missing:
            missing.append(package)
    if sftp_server() is None and "openssh-server" not in missing:
        missing.append("openssh-sftp-server")
    return missing


def standin_reasons(missing: Sequence[str]) -> tuple[str, str]:
    """Why the SSH hosts and why the database need stand-ins ("" where their packages are all
    there), given `missing_prerequisites()`."""
    ssh = [p for p in missing if p in SSH_PACKAGES]
    db = [p for p in missing if p in DATABASE_PACKAGES]
    ssh_why = ("OpenSSH sshd not installed" if "openssh-server" in ssh
               else f"{', '.join(ssh)} not installed" if ssh else "")
    db_why = ("MariaDB not installed" if "mariadb-server" in db
              else f"{', '.join(db)} not installed" if db else "")
    return ssh_why, db_why


def standin_note(missing: Sequence[str]) -> str:
    """One line naming what the stand-ins replace and why, for the demo and the log."""
    ssh_why, db_why = standin_reasons(missing)
    bastion = "a built-in SSH bastion (port forwarding only, runs no commands) stands in"
    database = "a line-echo service (not MySQL) stands in for the database"
    if ssh_why and db_why:
        return f"{ssh_why}: {bastion}; {db_why}: {database}"
    if ssh_why or db_why:  # one missing peer is enough: the stand-ins come as a pair
        first, second = (bastion, database) if ssh_why else (database, bastion)
        return f"{ssh_why or db_why}: {first}; with it, {second}"
    return f"stand-ins requested: {bastion}; {database}"


def standin_greeting_reason(missing: Sequence[str]) -> str:
    """Why the stand-in database is there, for its greeting line."""
    ssh_why, db_why = standin_reasons(missing)
    return db_why or ssh_why or "stand-ins requested"
