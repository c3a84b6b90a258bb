"""The measuring client: talks to a local forward (ours or ssh -L) and times what comes back.

Each function takes the forward's local address and returns a number; each is bounded in time.
"""

from __future__ import annotations

import selectors
import socket
import statistics
import time

from bench.net import require_loopback

MiB = 1 << 20
_PATTERN = bytes(range(256)) * (1 << 12)  # 1 MiB


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    sock = socket.create_connection((require_loopback(host), port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def download(host: str, port: int, nbytes: int, timeout: float = 60.0) -> float:
    """MB/s (10^6) of `nbytes` sent by the target's source, from connect to the last byte."""
    buf = bytearray(MiB)
    started = time.perf_counter()
    with _connect(host, port, timeout) as sock:
        sock.sendall(f"DOWN {nbytes}\n".encode())
        got = 0
        while n := sock.recv_into(buf):
            got += n
    seconds = time.perf_counter() - started
    if got != nbytes:
        raise RuntimeError(f"download: got {got} of {nbytes} bytes")
    return nbytes / seconds / 1e6


def upload(host: str, port: int, nbytes: int, timeout: float = 60.0) -> float:
    """MB/s of `nbytes` sent to the target's sink, from connect until it confirms the count."""
    started = time.perf_counter()
    with _connect(host, port, timeout) as sock:
        sock.sendall(b"UP\n")
        left = nbytes
        while left > 0:
            chunk = _PATTERN if left >= len(_PATTERN) else _PATTERN[:left]
            sock.sendall(chunk)
            left -= len(chunk)
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while data := sock.recv(64):
            reply += data
    seconds = time.perf_counter() - started
    if reply.strip() != str(nbytes).encode():
        raise RuntimeError(f"upload: the sink counted {reply!r}, expected {nbytes}")
    return nbytes / seconds / 1e6


def first_byte_ms(host: str, port: int, count: int, timeout: float = 5.0) -> float:
    """Median ms from connect() to the banner's first byte, over `count` sequential connections."""
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        with _connect(host, port, timeout) as sock:
            if not sock.recv(1):
                raise RuntimeError("first byte: the connection closed before the banner")
            samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


def request_reply_ms(host: str, port: int, count: int, timeout: float = 5.0) -> float:
    """Median ms from connect() to the first byte of the reply to a request sent at once
    (the client speaks first, like HTTP), over `count` sequential connections."""
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        with _connect(host, port, timeout) as sock:
            sock.sendall(b"ECHO\nx\n")
            if not sock.recv(1):
                raise RuntimeError("request/reply: the connection closed before the reply")
            samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


def concurrent_round_trips(host: str, port: int, count: int, timeout: float = 30.0) -> int:
    """Open `count` connections at once, each does one echo round trip while all stay open;
    returns how many got their echo back within `timeout`."""
    require_loopback(host)
    selector = selectors.DefaultSelector()
    want: dict[socket.socket, bytes] = {}
    got: dict[socket.socket, bytes] = {}
    served = 0
    deadline = time.monotonic() + timeout
    try:
        for i in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.connect_ex((host, port))
            want[sock] = f"ping {i:05d}\n".encode()
            got[sock] = b""
            selector.register(sock, selectors.EVENT_WRITE)
        while served < count and time.monotonic() < deadline:
            for key, events in selector.select(max(0.0, deadline - time.monotonic())):
                sock = key.fileobj  # type: ignore[assignment]
                if events & selectors.EVENT_WRITE:
                    try:
                        sock.sendall(b"ECHO\n" + want[sock])
                    except OSError:
                        selector.unregister(sock)
                        continue
                    selector.modify(sock, selectors.EVENT_READ)
                    continue
                try:
                    data = sock.recv(4096)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    selector.unregister(sock)
                    continue
                got[sock] += data
                if got[sock] == want[sock]:
                    served += 1
                    selector.unregister(sock)
    finally:
        for sock in want:
            sock.close()
        selector.close()
    return served
