"""One command run on the bastion through an exec channel of an existing transport.

Bounded in every phase: paramiko's ``exec_command`` waits for sshd's reply with no timeout, so a
watchdog closes the channel at the deadline, which wakes every wait on it (the request, the
reads, the exit status). stderr is drained alongside stdout: both share the channel's window,
so an unread stderr could stall stdout.
"""

from __future__ import annotations

import threading
import time

import paramiko

from bastion_tray.core.errors import SSHError

#: stdout read at most; past it the channel is closed and the text so far returned
MAX_OUTPUT = 1024 * 1024
#: stderr kept for the error message (the rest is read and dropped)
MAX_STDERR = 64 * 1024
#: how long one read waits before stderr is drained again
POLL_SECONDS = 0.05
_CHUNK = 32 * 1024
_SHOWN = 60  # characters of the command quoted in an error


def run_command(transport: paramiko.Transport, command: str, timeout: float, *,
                where: str) -> str:
    """`command`'s stdout (utf-8, bad bytes replaced), or SSHError naming what failed.

    `where` names the bastion in messages. Never blocks much past `timeout`; always closes
    the channel.
    """
    shown = command if len(command) <= _SHOWN else command[:_SHOWN - 1] + "…"
    what = f"running {shown!r} on the bastion {where}"
    deadline = time.monotonic() + timeout
    try:
        channel = transport.open_session(timeout=timeout)
    except paramiko.ChannelException as exc:
        raise SSHError(f"{what} failed: the bastion refused a session channel "
                       f"({exc.text or f'code {exc.code}'})",
                       hint="the bastion's sshd may limit sessions (MaxSessions)") from None
    except (paramiko.SSHException, EOFError, OSError) as exc:
        if time.monotonic() >= deadline:
            raise SSHError(f"{what} timed out after {timeout:g} s (no session channel)"
                           ) from None
        raise SSHError(f"{what} failed: no session channel ({str(exc) or type(exc).__name__})"
                       ) from None
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        channel.close()

    watchdog = threading.Timer(max(deadline - time.monotonic(), 0.0), expire)
    watchdog.name, watchdog.daemon = "bastion-exec-watchdog", True
    watchdog.start()
    try:
        try:
            channel.exec_command(command)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if expired.is_set():
                raise SSHError(f"{what} timed out after {timeout:g} s (no answer to the exec "
                               "request)") from None
            if not transport.is_active():
                raise SSHError(f"{what} failed: the connection to the bastion was lost"
                               ) from None
            raise SSHError(f"{what} failed: the bastion refused to run it "
                           f"({str(exc) or type(exc).__name__})") from None
        stdout, stderr, truncated = _read_all(channel)
        if not truncated:
            channel.status_event.wait()  # set by the exit status, a close, or the watchdog
        watchdog.cancel()
        # the watchdog may fire just after the command finished: only then is that no timeout
        finished = truncated or (channel.eof_received and channel.exit_status != -1)
        if not transport.is_active():
            raise SSHError(f"{what} failed: the connection to the bastion was lost")
        if expired.is_set() and not finished:
            raise SSHError(f"{what} timed out after {timeout:g} s")
    finally:
        watchdog.cancel()
        channel.close()
    if not truncated:
        status = channel.exit_status
        if status != 0:
            first = stderr.decode("utf-8", "replace").strip().partition("\n")[0].strip()
            ended = (f"exited with code {status}" if status != -1
                     else "ended without an exit status (killed by a signal?)")
            raise SSHError(f"{what} failed: it {ended}" + (f": {first}" if first else ""))
    return stdout.decode("utf-8", "replace")


def _read_all(channel: paramiko.Channel) -> tuple[bytes, bytes, bool]:
    """(stdout, stderr, truncated) once the channel hit EOF, was closed, or gave MAX_OUTPUT."""
    stdout, stderr = bytearray(), bytearray()
    channel.settimeout(POLL_SECONDS)
    while True:
        _drain_stderr(channel, stderr)
        try:
            data = channel.recv(min(_CHUNK, MAX_OUTPUT - len(stdout)))
        except TimeoutError:
            continue
        if not data:  # EOF (every byte of both streams is in), or closed under us
            _drain_stderr(channel, stderr)
            return bytes(stdout), bytes(stderr), False
        stdout += data
        if len(stdout) >= MAX_OUTPUT:
            return bytes(stdout), bytes(stderr), True


def _drain_stderr(channel: paramiko.Channel, into: bytearray) -> None:
    while channel.recv_stderr_ready():
        data = channel.recv_stderr(_CHUNK)
        if not data:
            return
        into += data[:max(MAX_STDERR - len(into), 0)]
