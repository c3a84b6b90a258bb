"""Other people's SSH connections to the bastion, counted on the bastion itself (DESIGN "Teams").

Before an idle stop the daemon runs `COUNT_COMMAND` over its own link and feeds the output to
`count_other_sessions`. The command prints ``$SSH_CONNECTION`` (``client_ip client_port
server_ip server_port`` as sshd sees *this* connection) and the established TCP connections,
from ``ss`` where it exists, else the raw ``/proc/net/tcp{,6}``. Counting the connections whose
local end is that sshd endpoint and dropping the one whose peer is that client endpoint is exact
even behind NAT: both halves come from the bastion's own kernel, never from what the laptop
thinks its address is.

Pure: no SSH here, the adapter runs the command (``BastionConnection.run``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence

#: seconds the daemon gives the command (exec, ss, output) before it gives up on counting
SESSION_COUNT_TIMEOUT = 10.0

#: where ss is looked for, in order: a bare name goes through ``command -v`` (the exec's PATH);
#: a non-login exec on Amazon Linux 2023 has no /usr/sbin on PATH, and ss lives there
SS_CANDIDATES: tuple[str, ...] = ("ss", "/usr/sbin/ss", "/sbin/ss")

_MARK = "==bastion-tray:{}=="
MARK_SSH_CONNECTION = _MARK.format("ssh_connection")
MARK_SS = _MARK.format("ss")
MARK_PROC = _MARK.format("proc")
MARK_END = _MARK.format("end")
_MARKERS = (MARK_SSH_CONNECTION, MARK_SS, MARK_PROC, MARK_END)

_SAFE_CANDIDATE = re.compile(r"[A-Za-z0-9._/-]+")
_DIGITS = re.compile(r"[0-9]{1,5}")
_HEX_ENDPOINT = re.compile(r"([0-9A-Fa-f]{8}|[0-9A-Fa-f]{32}):([0-9A-Fa-f]{4})")
_PROC_ESTABLISHED = "01"  # TCP_ESTABLISHED in include/net/tcp_states.h
_SHOWN = 120  # characters of an offending line quoted in an error

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Endpoint = tuple[Address, int]


def count_command(ss_candidates: Sequence[str] = SS_CANDIDATES) -> str:
    """The POSIX sh command that prints what `count_other_sessions` reads.

    Wrapped in ``/bin/sh -c '…'`` so the login shell of the bastion's user (bash, zsh, fish)
    only has to run one plain command. `ss_candidates` exists for tests that force the /proc
    fallback; production uses `COUNT_COMMAND`.
    """
    for candidate in ss_candidates:
        if not _SAFE_CANDIDATE.fullmatch(candidate):
            raise ValueError(f"unsafe ss candidate {candidate!r}: letters, digits, . _ / - only")
    words = [c if "/" in c else f"$(command -v {c} 2>/dev/null)" for c in ss_candidates]
    search = (f'for c in {" ".join(words)}; do '
              'if [ -z "$ss" ] && [ -x "$c" ]; then ss=$c; fi; done; ') if words else ""
    script = (
        f'echo {MARK_SSH_CONNECTION}; echo "${{SSH_CONNECTION:-}}"; ss=; {search}'
        'if [ -n "$ss" ] && out=$("$ss" -Htn state established 2>/dev/null); then '
        f'echo {MARK_SS}; printf "%s\\n" "$out"; '
        f'else echo {MARK_PROC}; cat /proc/net/tcp /proc/net/tcp6 2>/dev/null; fi; '
        f'echo {MARK_END}'
    )
    assert "'" not in script  # it is single-quoted whole
    return f"/bin/sh -c '{script}'"


COUNT_COMMAND: str = count_command()


def count_other_sessions(output: str, also_ours: Sequence[tuple[str, int]] = ()) -> int:
    """Established connections to our sshd endpoint, minus our own, from `COUNT_COMMAND`'s output.
    `also_ours`: our other connections, as the bastion saw them (the data plane's ssh master).

    Raises ValueError saying what is wrong (and nothing else, whatever `output` holds): no
    SSH_CONNECTION, no connection listing, an unreadable line, or a listing that lacks our own
    connection — then the listing did not see sshd's sockets and its count cannot be trusted.
    """
    if not isinstance(output, str):
        raise ValueError(f"expected the command's output as text, got {type(output).__name__}")
    sections = _sections(output)
    if MARK_SSH_CONNECTION not in sections:
        raise ValueError("the output has no SSH_CONNECTION section: not the count command's "
                         "output, or the bastion's shell printed nothing")
    if MARK_END not in sections:
        raise ValueError("the output ends before its end marker: it was cut short")
    client, server = _parse_ssh_connection(sections[MARK_SSH_CONNECTION])
    if MARK_SS in sections:
        connections = _parse_ss(sections[MARK_SS])
    elif MARK_PROC in sections:
        connections = _parse_proc(sections[MARK_PROC])
    else:
        raise ValueError("the output has neither ss nor /proc/net/tcp output: the bastion could "
                         "not list its TCP connections")
    # a set: /proc/net/tcp is read in pages while sockets come and go, so a busy machine can
    # list one connection twice
    peers = {peer for local, peer in connections if local == server}
    if client not in peers:
        raise ValueError(f"our own connection {_show(client)} → {_show(server)} is not among the "
                         f"{len(connections)} established connections listed, so the listing "
                         "cannot be trusted (another network namespace?)")
    ours = {client, *((_address(host, "our ssh master"), port) for host, port in also_ours
                      if host and port)}
    return sum(1 for peer in peers if peer not in ours)


# -- output structure -----------------------------------------------------------------------

def _sections(output: str) -> dict[str, list[str]]:
    """Marker → the lines after it. Text before the first marker (a motd) is ignored."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        stripped = line.strip()
        if stripped in _MARKERS:
            if stripped in sections:
                raise ValueError(f"the marker {stripped} appears twice in the output")
            current = sections[stripped] = []
            if stripped == MARK_END:
                break
        elif current is not None:
            current.append(line)
    return sections


def _parse_ssh_connection(lines: list[str]) -> tuple[Endpoint, Endpoint]:
    """(client, server) from the line ``client_ip client_port server_ip server_port``."""
    text = lines[0].strip() if lines else ""
    if not text:
        raise ValueError("SSH_CONNECTION is not set on the bastion: the command did not run "
                         "in an SSH session, so our own connection cannot be told apart")
    fields = text.split()
    if len(fields) != 4:
        raise ValueError(f"SSH_CONNECTION {_quote(text)} is not 'client_ip client_port "
                         "server_ip server_port'")
    client = (_address(fields[0], "SSH_CONNECTION"), _port(fields[1], "SSH_CONNECTION"))
    server = (_address(fields[2], "SSH_CONNECTION"), _port(fields[3], "SSH_CONNECTION"))
    if client[1] == 0 or server[1] == 0:
        raise ValueError(f"SSH_CONNECTION {_quote(text)} has port 0")
    return client, server


# -- ss -------------------------------------------------------------------------------------

def _parse_ss(lines: Iterable[str]) -> list[tuple[Endpoint, Endpoint]]:
    """(local, peer) per line of ``ss -Htn state established``.

    A line is ``Recv-Q Send-Q Local:Port Peer:Port`` (``state established`` drops the State
    column); the first two fields that read as endpoints are taken, so a State or Netid column,
    ``-p``'s ``users:((…))`` and ``-e``'s ``uid:1000 ino:…`` change nothing.
    """
    connections = []
    for line in lines:
        fields = line.split()
        if not fields or fields[0] in ("Recv-Q", "State", "Netid"):  # blank, or a header
            continue
        endpoints = [e for e in (_ss_endpoint(f) for f in fields) if e is not None]
        if len(endpoints) < 2:
            raise ValueError(f"unreadable ss line {_quote(line)}: expected "
                             "'Recv-Q Send-Q local:port peer:port'")
        connections.append((endpoints[0], endpoints[1]))
    return connections


def _ss_endpoint(field: str) -> Endpoint | None:
    """``10.0.0.5:22``, ``[::1]:22``, ``[::ffff:10.0.0.5]:22``, ``[fe80::1]%eth0:22`` (and old
    ss's unbracketed ``::1:22``); None for anything else."""
    host, colon, port = field.rpartition(":")
    if not colon or not _DIGITS.fullmatch(port) or int(port) > 0xFFFF:
        return None
    if host.startswith("["):
        host, bracket, scope = host[1:].partition("]")
        if not bracket or scope[:1] not in ("", "%"):
            return None
    try:  # an interface scope, inside the brackets or after them, is dropped
        return _normalised(ipaddress.ip_address(host.partition("%")[0])), int(port)
    except ValueError:
        return None


# -- /proc/net/tcp --------------------------------------------------------------------------

def _parse_proc(lines: Iterable[str]) -> list[tuple[Endpoint, Endpoint]]:
    """(local, peer) of each ESTABLISHED line of /proc/net/tcp and /proc/net/tcp6.

    ``sl: local rem st …`` with addresses in hex: the kernel prints each 32-bit word of the
    address in host byte order (little-endian on x86_64 and Graviton), the port as a number.
    """
    connections = []
    for line in lines:
        fields = line.split()
        if not fields or fields[0] == "sl":  # blank, or the header of either file
            continue
        if len(fields) < 4 or not fields[0].endswith(":"):
            raise ValueError(f"unreadable /proc/net/tcp line {_quote(line)}: expected "
                             "'sl: local_address rem_address st …'")
        local, peer = _hex_endpoint(fields[1], line), _hex_endpoint(fields[2], line)
        if fields[3] == _PROC_ESTABLISHED:
            connections.append((local, peer))
    return connections


def _hex_endpoint(field: str, line: str) -> Endpoint:
    match = _HEX_ENDPOINT.fullmatch(field)
    if match is None:
        raise ValueError(f"unreadable address {_quote(field)} in /proc/net/tcp line "
                         f"{_quote(line)}: expected 8 or 32 hex digits, ':', 4 hex digits")
    raw = bytes.fromhex(match[1])
    packed = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return _normalised(ipaddress.ip_address(packed)), int(match[2], 16)


# -- addresses ------------------------------------------------------------------------------

def _normalised(address: Address) -> Address:
    """IPv4-mapped IPv6 (``::ffff:10.0.0.5``, a dual-stack socket) as the IPv4 address sshd
    reports in SSH_CONNECTION; IPv6 scope ids dropped (SSH_CONNECTION may lack them)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id is not None:
            return ipaddress.IPv6Address(str(address).partition("%")[0])
    return address


def _address(text: str, where: str) -> Address:
    try:
        return _normalised(ipaddress.ip_address(text.partition("%")[0]))
    except ValueError:
        raise ValueError(f"{where} holds {_quote(text)}, which is not an IP address") from None


def _port(text: str, where: str) -> int:
    if not _DIGITS.fullmatch(text) or int(text) > 0xFFFF:
        raise ValueError(f"{where} holds {_quote(text)}, which is not a port number")
    return int(text)


def _show(endpoint: Endpoint) -> str:
    address, port = endpoint
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def _quote(text: str) -> str:
    shown = text if len(text) <= _SHOWN else text[:_SHOWN] + "…"
    return repr(shown)
