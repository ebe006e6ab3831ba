"""WebSocket-client helpers of the studio's server tests (aiohttp client, real sockets on 127.0.0.1)."""
from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any, AsyncIterator

import aiohttp

from chatspot_ros.studio.protocol import unpack_frame
from chatspot_ros.studio.server import Studio, StudioConfig


def run(coro: Any, timeout: float = 60.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


@contextlib.asynccontextmanager
async def running(backend: Any, **config: Any) -> AsyncIterator[Studio]:
    studio = Studio(backend, StudioConfig(port=0, **config))
    await studio.start()
    try:
        yield studio
    finally:
        await studio.stop()


def origin(studio: Studio) -> str:
    return f"http://127.0.0.1:{studio.port}"


async def connect(session: aiohttp.ClientSession, studio: Studio, **kw: Any) -> aiohttp.ClientWebSocketResponse:
    kw.setdefault("headers", {"Origin": origin(studio)})
    return await session.ws_connect(f"{origin(studio)}/ws", **kw)


async def next_json(ws: aiohttp.ClientWebSocketResponse, kind: str, timeout: float = 10.0) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while True:
        msg = await ws.receive(timeout=max(0.01, end - time.monotonic()))
        assert msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), f"socket ended: {msg}"
        if msg.type == aiohttp.WSMsgType.TEXT:
            data = json.loads(msg.data)
            if data["type"] == kind:
                return data


async def next_frame(ws: aiohttp.ClientWebSocketResponse, timeout: float = 10.0) -> tuple[dict[str, Any], bytes]:
    end = time.monotonic() + timeout
    while True:
        msg = await ws.receive(timeout=max(0.01, end - time.monotonic()))
        if msg.type == aiohttp.WSMsgType.BINARY:
            return unpack_frame(msg.data)
        assert msg.type == aiohttp.WSMsgType.TEXT, f"socket ended: {msg}"


async def frozen_frame(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    header, _ = await next_frame(ws)
    await ws.send_json({"type": "freeze", "frame": header["frame"]})
    return header
