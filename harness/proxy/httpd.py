"""A minimal HTTP/1.1 server on asyncio streams, enough for a JSON API.

Handles Content-Length bodies and keep-alive; refuses chunked request bodies (no
Toxiproxy client sends them). Every read has a timeout, so a client that goes quiet
cannot hold a connection forever (Toxiproxy: 15 s read timeout, 60 s idle timeout).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import unquote, urlsplit

log = logging.getLogger("harness.proxy.api")

READ_TIMEOUT = 15.0
IDLE_TIMEOUT = 60.0
MAX_HEAD = 64 * 1024
MAX_BODY = 8 * 1024 * 1024


@dataclass
class Request:
    method: str
    path: str  # percent-decoded, no query
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Awaitable[Response]]


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class HttpServer:
    def __init__(self, handler: Handler):
        self.handler = handler
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._spawn, host, port, reuse_address=True)
        return self._server.sockets[0].getsockname()[1]

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._clients):
            w.close()
        for task in list(self._tasks):
            task.cancel()

    def _spawn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Our own task rather than start_server's: Python 3.11 logs a spurious error when
        # its wrapper task is cancelled (at shutdown, with keep-alive clients connected).
        task = asyncio.create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        try:
            while True:
                try:
                    request, keep_alive = await self._read_request(reader)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    return  # the client went away or went quiet
                except BadRequest as exc:
                    await self._write(writer, Response(exc.status, f"{exc}\n".encode(), "text/plain; charset=utf-8"),
                                      keep_alive=False)
                    return
                try:
                    response = await self.handler(request)
                except Exception:  # one bad request must not stop the API
                    log.exception("%s %s failed", request.method, request.path)
                    response = Response(500, b'{"error":"internal error","status":500}\n')
                log.debug("%s %s -> %d", request.method, request.path, response.status)
                await self._write(writer, response, keep_alive)
                if not keep_alive:
                    return
        except ConnectionError:
            pass
        finally:
            self._clients.discard(writer)
            writer.close()

    async def _read_request(self, reader: asyncio.StreamReader) -> tuple[Request, bool]:
        # The first line may be long in coming (keep-alive idle); the rest must follow.
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT)
        except asyncio.LimitOverrunError:
            raise BadRequest(431, "request header too large") from None
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ")
        except ValueError:
            raise BadRequest(400, "malformed request line") from None
        if not version.startswith("HTTP/1."):
            raise BadRequest(505, "HTTP version not supported")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep:
                raise BadRequest(400, "malformed header line")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise BadRequest(411, "chunked request bodies are not supported: send Content-Length")
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise BadRequest(400, "bad Content-Length") from None
        if length < 0 or length > MAX_BODY:
            raise BadRequest(413, "request body too large")
        body = await asyncio.wait_for(reader.readexactly(length), READ_TIMEOUT) if length else b""
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
        return Request(method, unquote(urlsplit(target).path), headers, body), keep_alive

    async def _write(self, writer: asyncio.StreamWriter, response: Response, keep_alive: bool) -> None:
        try:
            reason = HTTPStatus(response.status).phrase
        except ValueError:
            reason = ""
        head = [f"HTTP/1.1 {response.status} {reason}"]
        if response.status != 204:  # a 204 carries neither body nor length
            head.append(f"Content-Type: {response.content_type}")
            head.append(f"Content-Length: {len(response.body)}")
        head += [f"{k}: {v}" for k, v in response.headers.items()]
        head.append(f"Connection: {'keep-alive' if keep_alive else 'close'}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        if response.status != 204:
            writer.write(response.body)
        await writer.drain()
