"""A stand-in for many forks: one asyncio process listening on many loopback ports, answering every
HTTP/1.1 request with the port it was reached on and the ``baggage`` it got.

    python -m bench.portecho COUNT      # prints one JSON line: the ports it bound, then serves

The answer is the proof of routing: a request Envoy sent to the wrong cluster is answered from the
wrong port. Ports are bound to 127.0.0.1:0 by this process itself, so no other process can take one
between choosing and binding it. Deliberately minimal (no framework): a thousand fork processes would
measure the machine, not the data plane, and a framework's per-request cost would hide Envoy's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sys
from collections.abc import Awaitable, Callable


async def _serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            baggage = b""
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                lowered = name.strip().lower()
                if lowered == b"baggage":
                    baggage = value.strip()
                elif lowered == b"content-length":
                    length = int(value)
            if length:
                await reader.readexactly(length)
            body = b"%d %s" % (port, baggage)
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n%s"
                % (len(body), body)
            )
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


def _handler(port: int) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _serve_one(reader, writer, port)

    return handle


async def _main(count: int) -> None:
    servers = []
    ports = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
        servers.append(await asyncio.start_server(_handler(port), sock=sock, backlog=128))
        ports.append(port)
    print(json.dumps(ports), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


def main() -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(int(sys.argv[1])))


if __name__ == "__main__":
    main()
