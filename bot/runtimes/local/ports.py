"""Port choice for services, forks and Envoy listeners."""

from __future__ import annotations

import socket
from collections.abc import Collection
from contextlib import ExitStack

from bot.config import InfrastructureError


def free_port() -> int:
    """A port the kernel considers free now; the caller binds it moments later."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports(count: int, avoid: Collection[int] = ()) -> list[int]:
    """`count` distinct ports the kernel considers free now, none of them in `avoid`. Each probe socket
    stays bound until all are chosen: closed one by one, the kernel may hand the same port out twice,
    and two of a baseline's listeners would then share one."""
    chosen: list[int] = []
    with ExitStack() as held:
        for _ in range(count + len(avoid) + 64):
            if len(chosen) == count:
                break
            sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
            if port not in avoid:
                chosen.append(port)
    if len(chosen) < count:
        raise InfrastructureError(f"no {count} free ports on 127.0.0.1")
    return chosen


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
