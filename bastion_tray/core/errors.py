"""One exception tree. Every error carries a message a user can act on.

`exit_code` is what the CLI returns for it: 2 for usage and configuration errors (the user
must change what they typed or wrote), 1 for runtime failures (AWS, SSH, the daemon).
`kind` is the stable name used on the control socket, so a client can rebuild the error.
"""

from __future__ import annotations


class BastionTrayError(Exception):
    """Base of every error the app raises on purpose."""

    exit_code = 1
    kind = "error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: what to do about it, e.g. "run: aws sso login --profile foo"
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  → {self.hint}" if self.hint else self.message


class UsageError(BastionTrayError):
    """The command line asks for something that does not exist or makes no sense."""

    exit_code = 2
    kind = "usage"


class ConfigError(BastionTrayError):
    """The configuration file is missing, unreadable or invalid.

    `problems` holds every problem found, so a bad file is reported whole, not one error at a time.
    """

    exit_code = 2
    kind = "config"

    def __init__(self, message: str, *, problems: list[str] | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.problems = problems or [message]


class CloudError(BastionTrayError):
    """The AWS API refused or failed a call."""

    kind = "cloud"


class CredentialsError(CloudError):
    """AWS credentials are missing or expired (SSO tokens included)."""

    kind = "credentials"


class SSHError(BastionTrayError):
    """The SSH connection to the bastion (or through it) failed."""

    kind = "ssh"


class HostKeyError(SSHError):
    """The bastion's host key is unknown or has changed."""

    kind = "host_key"

    def __init__(self, message: str, *, fingerprint: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.fingerprint = fingerprint


class PassphraseNeeded(SSHError):
    """The identity file is encrypted and no (or a wrong) passphrase was given.

    A client on a terminal answers this by asking for the passphrase and sending it along with
    its next request; the daemon keeps it in memory only.
    """

    kind = "passphrase"

    def __init__(self, message: str, *, path: str = "", wrong: bool = False,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.path = path
        self.wrong = wrong


class LoopbackViolation(BastionTrayError):
    """BASTION_TRAY_LOOPBACK_ONLY is set and a connection to another address was attempted."""

    kind = "loopback"


class ForwardError(BastionTrayError):
    """A local listener could not be opened (port in use, permission denied)."""

    kind = "forward"


class WaitTimeout(BastionTrayError):
    """Something we waited for did not happen in time; the message says what."""

    kind = "timeout"


class DaemonError(BastionTrayError):
    """The daemon could not be reached, started, or answered with nonsense."""

    kind = "daemon"


class InUseError(BastionTrayError):
    """A stop refused because others use the bastion (`stop --force` overrides)."""

    kind = "in_use"


_KINDS: dict[str, type[BastionTrayError]] = {}


def _register(cls: type[BastionTrayError]) -> None:
    _KINDS[cls.kind] = cls
    for sub in cls.__subclasses__():
        _register(sub)


_register(BastionTrayError)


def error_from_wire(kind: str, message: str, hint: str | None = None) -> BastionTrayError:
    """Rebuild an error a daemon sent over the control socket (unknown kinds → the base class)."""
    cls = _KINDS.get(kind, BastionTrayError)
    if cls is HostKeyError:
        return HostKeyError(message, fingerprint="", hint=hint)
    if cls is PassphraseNeeded:
        return PassphraseNeeded(message, wrong=message.startswith("wrong"), hint=hint)
    if cls is ConfigError:
        return ConfigError(message, hint=hint)
    return cls(message, hint=hint)
