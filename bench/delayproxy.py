"""A TCP proxy that holds every chunk for a fixed delay, each way: added round-trip time.

    .venv/bin/python bench/delayproxy.py LISTEN_HOST:PORT TARGET_HOST:PORT [--delay-ms 1]

For kernels without ``netem``: put it in front of Redis and point the workers
at it, and each request and each reply arrive ``delay`` later (a round trip
gains ``2 * delay``). Chunks keep their order and are pipelined, so the delay
adds latency, not a bandwidth cap (shape that with ``tc ... tbf``). Runs until
killed; prints ``ready`` once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time

CHUNK = 256 * 1024


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def release() -> None:
        while True:
            due, data = await held.get()
            if not data:
                break
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()

    releaser = asyncio.create_task(release())
    try:
        while data := await reader.read(CHUNK):
            held.put_nowait((time.monotonic() + delay, data))
    finally:
        held.put_nowait((0.0, b""))
        with contextlib.suppress(ConnectionError):
            await releaser
            writer.close()


async def _serve(listen: tuple[str, int], target: tuple[str, int], delay: float) -> None:
    async def connect(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*target)
        except OSError:
            client_w.close()
            return
        with contextlib.suppress(ConnectionError):
            await asyncio.gather(_pump(client_r, server_w, delay), _pump(server_r, client_w, delay))

    server = await asyncio.start_server(connect, *listen)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("listen", type=_address)
    parser.add_argument("target", type=_address)
    parser.add_argument("--delay-ms", type=float, default=1.0, help="added each way")
    args = parser.parse_args()
    asyncio.run(_serve(args.listen, args.target, args.delay_ms / 1000))


if __name__ == "__main__":
    main()
