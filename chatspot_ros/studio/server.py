"""The studio's web server (aiohttp): the static page, a WebSocket per page, an upload route.

Frames: the backend puts source frames into one latest-frame slot; a pump takes the newest at most
``fps`` times a second, encodes it to JPEG on a worker thread, keeps it among the held frames and
hands it to every page's own one-frame slot. A page that reads slowly gets the newest frame when
it is ready again; the frames it missed are counted (``frames.dropped_slow_client``), never queued.

Page messages are checked by :mod:`chatspot_ros.studio.protocol`; every refused one is answered
with an ``error`` message naming the reason and counted (``messages.rejected`` and
``rejected.<reason>``). The server keeps running whatever a page sends.

Security defaults (docs/studio.md): loopback bind; the WebSocket and the upload route accept only
a page of this server's own origin (or ``--allow-origin``); on a loopback bind the Host header must
name the loopback too (DNS rebinding); capped message, upload and image sizes; a rate limit per page.
"""
from __future__ import annotations

import asyncio
import collections
import ipaddress
import json
import logging
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

from aiohttp import WSCloseCode, WSMsgType, web

from chatspot_ros.referring.instructions import InstructionTemplates
from chatspot_ros.studio.backend import Answer, Backend, FrameSink
from chatspot_ros.studio.hub import Counters, HeldFrame, HeldFrames, LatestSlot, SourceFrame, TokenBucket
from chatspot_ros.studio.protocol import (
    AskMessage,
    CancelMessage,
    FreezeMessage,
    Limits,
    ProtocolError,
    SuggestMessage,
    check_region_in_frame,
    pack_frame,
    parse_message,
    presets,
    region_to_json,
)

LOG = logging.getLogger("chatspot_studio")
STATIC_DIR = Path(__file__).resolve().parent / "static"
DEFAULT_PORT = 8765
OUTBOX_LIMIT = 256  # answers and errors waiting for one page; beyond it the page is disconnected
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
                               "style-src 'self'; script-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class StudioConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT  # 0: any free port (tests)
    fps: float = 10.0  # frames sent to the pages per second, at most
    jpeg_quality: int = 80
    keep_frames: int = 16  # recent frames held (a page freezes one of them, which is then kept for it)
    limits: Limits = field(default_factory=Limits)
    max_ws_message_bytes: int = 1024 * 1024  # above this the server closes the WebSocket (code 1009)
    max_upload_bytes: int = 8 * 1024 * 1024
    max_upload_pixels: int = 4096 * 4096
    rate: float = 20.0  # page messages per second per page (bursts of 2x)
    allowed_origins: tuple[str, ...] = ()
    status_period_s: float = 1.0
    max_pages: int = 16  # pages connected at once (each holds a frozen frame)

    def __post_init__(self) -> None:
        if not 0 < self.fps <= 60:
            raise ValueError(f"fps must be in (0, 60], got {self.fps}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.max_ws_message_bytes < self.limits.max_message_bytes:
            raise ValueError("max_ws_message_bytes must be at least limits.max_message_bytes")
        if min(self.rate, self.keep_frames, self.max_upload_bytes, self.max_upload_pixels, self.max_pages) <= 0:
            raise ValueError("rate, keep_frames, max_upload_bytes, max_upload_pixels and max_pages must be positive")
        for origin in self.allowed_origins:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
                raise ValueError(f"allowed origin must look like http://host:port, got {origin!r}")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Page:
    """One connected page: its socket, its one-frame slot, its newest-only and ordered messages."""

    def __init__(self, ws: web.WebSocketResponse, bucket: TokenBucket, number: int) -> None:
        self.ws = ws
        self.bucket = bucket
        self.number = number
        self.frame: Optional[HeldFrame] = None  # the next frame to send
        self.pinned: Optional[HeldFrame] = None  # the frame the page froze (held while it is frozen)
        self.newest: dict[str, dict[str, Any]] = {}  # overlay, status, partial:<id>: the newest wins
        self.outbox: collections.deque[dict[str, Any]] = collections.deque()
        self.wake = asyncio.Event()
        self.requests: dict[str, tuple[asyncio.Task, asyncio.Event]] = {}
        self.frames_dropped = 0


class Studio(FrameSink):
    """The server. ``await start()`` / ``await stop()``; ``port`` is the bound port."""

    def __init__(self, backend: Backend, config: StudioConfig = StudioConfig(),
                 templates: Optional[InstructionTemplates] = None, counters: Optional[Counters] = None) -> None:
        self.backend = backend
        self.config = config
        self.counters = counters if counters is not None else Counters()
        self.templates = templates or InstructionTemplates()
        self.held = HeldFrames(config.keep_frames)
        self.incoming: LatestSlot[SourceFrame] = LatestSlot(self.counters, "frames.superseded")
        self.pages: set[_Page] = set()
        self._page_numbers = 0
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._frame_ready: Optional[asyncio.Event] = None
        self._tasks: list[asyncio.Task] = []
        self._runner: Optional[web.AppRunner] = None
        self.port = config.port
        self.app = self._make_app()

    # -- app ------------------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_upload_bytes + 64 * 1024,
                              middlewares=[self._headers_middleware])
        app.router.add_get("/", self._index)
        app.router.add_get("/api/config", self._config_route)
        app.router.add_get("/api/stats", self._stats_route)
        app.router.add_post("/api/upload", self._upload_route)
        app.router.add_get("/ws", self._ws_route)
        app.router.add_static("/static/", STATIC_DIR, show_index=False, follow_symlinks=False)
        return app

    @web.middleware
    async def _headers_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not self._host_allowed(request):
            self.counters.add("rejected.host")
            return web.json_response({"ok": False, "error": f"Host {request.host!r} is not served here"},
                                     status=403, headers=SECURITY_HEADERS)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            exc.headers.update(SECURITY_HEADERS)
            raise
        if not response.prepared:
            response.headers.update(SECURITY_HEADERS)
        return response

    def _host_allowed(self, request: web.Request) -> bool:
        """The Host header must name this machine: an IP address, a loopback name, the bound host,
        this machine's own names or an ``--allow-origin`` host. A page of a rebound DNS name
        (evil.example resolving to this machine) is refused, on a loopback bind and off it."""
        host = urlsplit(f"//{request.host}").hostname or ""
        if is_loopback(host) or _is_ip(host):
            return True
        own = {self.config.host, socket.gethostname(), socket.getfqdn()}
        allowed = {urlsplit(o).hostname for o in self.config.allowed_origins}
        return host.lower() in {h.lower() for h in own | allowed if h}

    def _origin_allowed(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:
            return True  # not a browser: no cross-site page can be behind it
        own = {f"http://{request.host}", f"https://{request.host}"}
        return origin.rstrip("/") in own | {o.rstrip("/") for o in self.config.allowed_origins}

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC_DIR / "index.html")

    def hello(self) -> dict[str, Any]:
        limits = self.config.limits
        return {"type": "hello", "mode": self.backend.mode, "presets": presets(self.templates),
                "fps": self.config.fps, "upload": hasattr(self.backend, "set_image"),
                "limits": {"max_message_bytes": limits.max_message_bytes,
                           "max_question_chars": limits.max_question_chars,
                           "max_polygon_points": limits.max_polygon_points,
                           "max_new_tokens": limits.max_new_tokens,
                           "max_upload_bytes": self.config.max_upload_bytes,
                           "keep_frames": self.config.keep_frames, **self.backend.model_limits()}}

    async def _config_route(self, request: web.Request) -> web.Response:
        return web.json_response(self.hello())

    async def _stats_route(self, request: web.Request) -> web.Response:
        return web.json_response({"server": self.counters.snapshot(), "agent": self.backend.status(),
                                  "pages": len(self.pages)})

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._frame_ready = asyncio.Event()
        loop, ready = self._loop, self._frame_ready
        self.incoming.on_put = lambda: loop.call_soon_threadsafe(ready.set)
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        self._tasks = [asyncio.ensure_future(self._pump()), asyncio.ensure_future(self._status_loop())]
        self.backend.start(self, self._loop)

    async def stop(self) -> None:
        for page in list(self.pages):
            for task, cancel in page.requests.values():
                cancel.set()
            await page.ws.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        await asyncio.get_running_loop().run_in_executor(None, self.backend.close)

    @property
    def url(self) -> str:
        host = self.config.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}/"

    # -- frames and overlays (FrameSink: any thread) --------------------------------------------

    def offer_frame(self, frame: SourceFrame) -> None:
        self.incoming.put(frame)

    def offer_overlay(self, overlay: dict[str, Any]) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._to_all_newest, "overlay", dict(overlay, type="overlay"))

    async def _pump(self) -> None:
        """At most ``fps`` frames a second: the newest source frame, encoded off the loop."""
        assert self._frame_ready is not None
        period = 1.0 / self.config.fps
        loop = asyncio.get_running_loop()
        last = 0.0
        while True:
            await self._frame_ready.wait()
            wait = last + period - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)  # frames arriving meanwhile replace each other (counted)
            self._frame_ready.clear()
            source = self.incoming.take()
            if source is None:
                continue
            last = time.monotonic()
            try:
                jpeg = await loop.run_in_executor(None, self.backend.to_jpeg, source, self.config.jpeg_quality)
            except Exception as err:  # noqa: BLE001 - a frame the backend cannot encode: counted, logged
                self.counters.add("frames.encode_failed")
                LOG.warning("frame not encoded: %s", err)
                continue
            held = self.held.add(source, jpeg)
            self.counters.add("frames.encoded")
            for page in list(self.pages):
                self._give_frame(page, held)

    def _give_frame(self, page: _Page, held: HeldFrame) -> None:
        if page.frame is not None:
            page.frames_dropped += 1
            self.counters.add("frames.dropped_slow_client")
        page.frame = held
        page.wake.set()

    def _to_all_newest(self, key: str, message: dict[str, Any]) -> None:
        for page in list(self.pages):
            page.newest[key] = message
            page.wake.set()

    def _send(self, page: _Page, message: dict[str, Any]) -> None:
        """An ordered message (answer, error): never dropped; a page that lets too many pile up is closed."""
        if message.get("type") == "answer":
            page.newest.pop(f"partial:{message.get('id')}", None)
        if len(page.outbox) >= OUTBOX_LIMIT:
            self.counters.add("pages.closed_outbox_full")
            asyncio.ensure_future(page.ws.close(code=1008, message=b"too many unread messages"))
            return
        page.outbox.append(message)
        page.wake.set()

    async def _sender(self, page: _Page) -> None:
        """Everything a page receives goes through here, so one slow page only ever delays itself."""
        ws = page.ws
        while not ws.closed:
            await page.wake.wait()
            page.wake.clear()
            while page.outbox and not ws.closed:
                await ws.send_str(json.dumps(page.outbox.popleft()))
            for key in list(page.newest):
                message = page.newest.pop(key, None)
                if message is not None and not ws.closed:
                    await ws.send_str(json.dumps(message))
            frame, page.frame = page.frame, None
            if frame is not None and not ws.closed:
                header = frame.header()
                header["dropped"] = page.frames_dropped
                await ws.send_bytes(pack_frame(header, frame.jpeg))
                self.counters.add("frames.sent")

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.status_period_s)
            if self.pages:
                status = {"type": "status", "agent": self.backend.status(), "server": self.counters.snapshot(),
                          "pages": len(self.pages)}
                self._to_all_newest("status", status)

    # -- WebSocket ------------------------------------------------------------------------------

    async def _ws_route(self, request: web.Request) -> web.StreamResponse:
        if not self._origin_allowed(request):
            self.counters.add("rejected.origin")
            LOG.warning("WebSocket from origin %r refused", request.headers.get("Origin"))
            return web.json_response({"ok": False, "error": "origin not allowed"}, status=403)
        if len(self.pages) >= self.config.max_pages:
            self.counters.add("rejected.too_many_pages")
            return web.json_response({"ok": False, "error": f"{self.config.max_pages} pages are open already"},
                                     status=503)
        ws = web.WebSocketResponse(max_msg_size=self.config.max_ws_message_bytes, compress=False, heartbeat=20.0)
        await ws.prepare(request)
        self._page_numbers += 1
        page = _Page(ws, TokenBucket(self.config.rate, 2 * self.config.rate), self._page_numbers)
        self.pages.add(page)
        self.counters.add("pages.connected")
        sender = asyncio.ensure_future(self._sender(page))
        self._send(page, self.hello())
        latest = self.held.latest()
        if latest is not None:
            self._give_frame(page, latest)
        try:
            async for msg in ws:
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    self._on_message(page, msg.data)
                elif msg.type == WSMsgType.ERROR:
                    break
            too_big = WSCloseCode.MESSAGE_TOO_BIG
            if ws.close_code == too_big or getattr(ws.exception(), "code", None) == too_big:
                # aiohttp closed it: a message above max_ws_message_bytes
                self.counters.add("messages.rejected")
                self.counters.add("rejected.too_large_closed")
        finally:
            self.pages.discard(page)
            for task, cancel in page.requests.values():
                cancel.set()
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            self.counters.add("pages.disconnected")
        return ws

    def _on_message(self, page: _Page, data: Any) -> None:
        self.counters.add("messages.received")
        if not page.bucket.allow():
            self._reject(page, ProtocolError(f"too many messages: at most {self.config.rate:g} per second",
                                             reason="rate_limited"))
            return
        try:
            message = parse_message(data, self.config.limits)
            if isinstance(message, CancelMessage):
                self._cancel(page, message)
            elif isinstance(message, FreezeMessage):
                self._freeze(page, message)
            else:
                self._start_request(page, message)
        except ProtocolError as err:
            self._reject(page, err)

    def _reject(self, page: _Page, err: ProtocolError) -> None:
        self.counters.add("messages.rejected")
        self.counters.add(f"rejected.{err.reason}")
        self._send(page, {"type": "error", "id": err.request_id, "reason": err.reason, "message": str(err)})

    def _cancel(self, page: _Page, message: CancelMessage) -> None:
        entry = page.requests.get(message.id)
        if entry is None:
            raise ProtocolError(f"no running question with id {message.id!r}", reason="unknown_id",
                                request_id=message.id)
        entry[1].set()
        self.counters.add("requests.cancel_asked")

    def _freeze(self, page: _Page, message: FreezeMessage) -> None:
        frame = self.held.get(message.frame)
        if frame is None:
            raise ProtocolError(f"frame {message.frame} is no longer held (the server keeps the last "
                                f"{self.config.keep_frames}); freeze a newer frame", reason="stale_frame")
        page.pinned = frame
        self.counters.add("frames.frozen")

    def _start_request(self, page: _Page, message: Any) -> None:
        if message.id in page.requests:
            raise ProtocolError(f"a question with id {message.id!r} is still running", reason="busy",
                                request_id=message.id)
        if page.requests:
            raise ProtocolError("a question is still being answered: wait for it or cancel it", reason="busy",
                                request_id=message.id)
        pinned = page.pinned
        frame = pinned if pinned is not None and pinned.id == message.frame else self.held.get(message.frame)
        if frame is None:
            raise ProtocolError(f"frame {message.frame} is neither frozen by this page nor among the last "
                                f"{self.config.keep_frames} frames; freeze a newer frame", reason="stale_frame",
                                request_id=message.id)
        try:
            check_region_in_frame(message.region, frame.source.width, frame.source.height)
        except ProtocolError as err:
            err.request_id = message.id
            raise
        cancel = asyncio.Event()
        task = asyncio.ensure_future(self._answer(page, message, frame, cancel))
        page.requests[message.id] = (task, cancel)
        self.counters.add("requests.started")

    async def _answer(self, page: _Page, message: Any, frame: HeldFrame, cancel: asyncio.Event) -> None:
        start = time.perf_counter()
        first_token: list[float] = []

        def on_partial(text: str, tokens: int) -> None:
            if not first_token:
                first_token.append(time.perf_counter())
            if message.id in page.requests:
                page.newest[f"partial:{message.id}"] = {"type": "partial", "id": message.id, "text": text,
                                                         "tokens": tokens}
                page.wake.set()

        try:
            if isinstance(message, AskMessage):
                answer = await self.backend.ask(frame, message, on_partial, cancel)
            else:
                assert isinstance(message, SuggestMessage)
                answer = await self.backend.suggest(frame, message, cancel)
        except Exception as err:  # noqa: BLE001 - a bug here fails this question only, logged and counted
            LOG.exception("question %s failed", message.id)
            self.counters.add("internal.errors")
            answer = Answer(ok=False, message=f"internal error: {err}")
        finally:
            page.requests.pop(message.id, None)
        outcome = "served" if answer.ok else "cancelled" if answer.cancelled else "failed"
        self.counters.add(f"requests.{outcome}")
        asked = frame.source.stamp
        self._send(page, {
            "type": "answer", "id": message.id, "ok": answer.ok, "cancelled": answer.cancelled,
            "text": answer.text, "message": answer.message, "instruction": answer.instruction,
            "steps": answer.steps, "frame": frame.id, "stamp": asked, "answered_stamp": answer.stamp,
            "stamp_matches": answer.stamp is None or answer.stamp == asked, "referred_by": answer.referred_by,
            "region": region_to_json(message.region), "kind": "ask" if isinstance(message, AskMessage) else "suggest",
            "question": message.question if isinstance(message, AskMessage) else message.task,
            "latency_ms": round((time.perf_counter() - start) * 1e3, 1),
            "first_token_ms": round((first_token[0] - start) * 1e3, 1) if first_token else None,
        })

    # -- upload (in-process mode) ---------------------------------------------------------------

    async def _upload_route(self, request: web.Request) -> web.Response:
        def refuse(status: int, reason: str, text: str) -> web.Response:
            self.counters.add("uploads.rejected")
            self.counters.add(f"rejected.upload_{reason}")
            return web.json_response({"ok": False, "error": text}, status=status)

        if not hasattr(self.backend, "set_image"):
            return refuse(404, "no_upload", "uploads are only taken without ROS (chatspot-studio --model ...)")
        if not self._origin_allowed(request):
            return refuse(403, "origin", "origin not allowed")
        limit = self.config.max_upload_bytes
        if request.content_length is not None and request.content_length > limit:
            return refuse(413, "too_large", f"upload of {request.content_length} bytes is larger than {limit}")
        data = bytearray()
        async for chunk in request.content.iter_chunked(64 * 1024):
            data += chunk
            if len(data) > limit:
                return refuse(413, "too_large", f"upload is larger than {limit} bytes")
        from chatspot_ros.studio.local import decode_upload

        name = request.headers.get("X-Filename", "upload")[:128]
        try:
            rgb = await asyncio.get_running_loop().run_in_executor(
                None, decode_upload, bytes(data), self.config.max_upload_pixels)
        except ValueError as err:
            return refuse(400, "invalid", str(err))
        self.backend.set_image(rgb, name)  # type: ignore[attr-defined]
        self.counters.add("uploads.accepted")
        return web.json_response({"ok": True, "width": int(rgb.shape[1]), "height": int(rgb.shape[0])})
