"""Viewers for the web benchmark, in their own process: N WebSocket readers, one client that asks for
MJPEG and never reads, and C connect/disconnect cycles (WebSocket, MJPEG, SSE in turn), all on 127.0.0.1.

    python -m drivecap.web.loadgen PORT N_WS STALLED(0|1) CYCLES

Prints ``ready`` once connected; when stdin closes (or says anything) it stops and prints one JSON line
``{"frames_seen": [...], "cycles": n}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys


async def _reader(port: int, stop: asyncio.Event, seen: list[int], k: int) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as s, s.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                msg = await asyncio.wait_for(ws.receive(), 0.5)
                if msg.type == aiohttp.WSMsgType.BINARY:
                    seen[k] += 1
                elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    return


async def _churn(port: int, stop: asyncio.Event, cycles: int, done: list[int]) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as s:
        for k in range(cycles):
            if stop.is_set():
                return
            path = ("/ws", "/stream.mjpg", "/events")[k % 3]
            if path == "/ws":
                async with s.ws_connect(f"http://127.0.0.1:{port}/ws"):
                    pass
            else:
                async with s.get(f"http://127.0.0.1:{port}{path}") as r:
                    await r.content.read(1)
            done[0] += 1
            await asyncio.sleep(0.05)


async def main(port: int, n_ws: int, stalled: bool, cycles: int) -> dict[str, object]:
    stalled_sock = None
    if stalled:
        stalled_sock = socket.create_connection(("127.0.0.1", port))
        stalled_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled_sock.sendall(f"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    stop = asyncio.Event()
    seen = [0] * n_ws
    done = [0]
    tasks = [asyncio.create_task(_reader(port, stop, seen, k)) for k in range(n_ws)]
    await asyncio.sleep(0.3)
    tasks.append(asyncio.create_task(_churn(port, stop, cycles, done)))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    if stalled_sock is not None:
        stalled_sock.close()
    return {"frames_seen": seen, "cycles": done[0]}


if __name__ == "__main__":
    port, n_ws, stalled, cycles = (int(a) for a in sys.argv[1:5])
    print(json.dumps(asyncio.run(main(port, n_ws, bool(stalled), cycles))), flush=True)
