"""The gateway's listening socket, bound before anything else starts so that a taken port is one clear line."""

from __future__ import annotations

import errno
import socket


class ListenError(Exception):
    """The gateway cannot listen where it was told to."""


def bind_listener(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A bound, listening, non-blocking TCP socket on ``host:port``."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {host}:{port}: unknown address ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ListenError(_why(exc, host, port)) from None
    sock.setblocking(False)
    return sock


def _why(exc: OSError, host: str, port: int) -> str:
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {where}: the port is already in use (another tokenctl or another program); "
            "stop it or choose another port with --port or server.port"
        )
    if exc.errno == errno.EACCES:
        return f"cannot listen on {where}: permission denied (ports below 1024 need extra privileges)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: this machine has no such address"
    return f"cannot listen on {where}: {exc.strerror}"
