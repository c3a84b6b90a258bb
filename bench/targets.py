"""The far end of every benchmark: a source, a sink, an echo and a banner, on one loopback host.

Runs as its own process (`python -m bench.targets HOST`), so its work does not share a GIL with
the forwarder or the measuring client. Prints one line "READY <cmd_port> <banner_port>".

cmd port, first line decides:  "DOWN <n>\\n" → n bytes, then close;  "UP\\n" → read to EOF,
reply "<count>\\n";  "ECHO\\n" → echo until EOF.  banner port: writes "HELLO\\n" at once (a server
that speaks first, like MySQL), then echoes.
"""

from __future__ import annotations

import socket
import socketserver
import sys
import threading

from bench.net import require_loopback

PATTERN = bytes(range(256)) * (1 << 14)  # 4 MiB
BACKLOG = 1024


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = BACKLOG

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that resets (the concurrent test closes all at once) is no news."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


def _read_line(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    line, _, rest = data.partition(b"\n")
    return line, rest


class Command(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        line, rest = _read_line(sock)
        verb, _, arg = line.decode("ascii", "replace").partition(" ")
        if verb == "DOWN":
            left = int(arg)
            view = memoryview(PATTERN)
            while left > 0:
                n = min(left, len(view))
                sock.sendall(view[:n])
                left -= n
        elif verb == "UP":
            count = len(rest)
            buf = bytearray(1 << 20)
            while n := sock.recv_into(buf):
                count += n
            sock.sendall(f"{count}\n".encode())
        elif verb == "ECHO":
            _echo(sock, rest)


class Banner(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"HELLO\n")
        _echo(sock, b"")


def _echo(sock: socket.socket, first: bytes) -> None:
    if first:
        sock.sendall(first)
    while data := sock.recv(1 << 16):
        sock.sendall(data)


def main(host: str) -> None:
    require_loopback(host)
    servers = [_Server((host, 0), Command), _Server((host, 0), Banner)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    ports = " ".join(str(s.server_address[1]) for s in servers)
    print(f"READY {ports}", flush=True)
    sys.stdin.read()  # until the parent closes our stdin (or dies)


if __name__ == "__main__":
    main(sys.argv[1])
