"""Port choice for services, forks and Envoy listeners."""

from __future__ import annotations

import socket

from bot.config import InfrastructureError


def free_port() -> int:
    """A port the kernel considers free now; the caller binds it moments later."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_free(port: int, what: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise InfrastructureError(f"port {port} ({what}) is already in use") from None


def ports_from(first: int, count: int, what: str) -> list[int]:
    """A fixed block of ports (stable entry URLs), each checked before use."""
    ports = list(range(first, first + count))
    for port in ports:
        require_free(port, what)
    return ports
