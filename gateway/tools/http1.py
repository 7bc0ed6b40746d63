"""A lean HTTP/1.1 transport for plain ``http://`` backends: asyncio streams, a keep-alive pool.

httpx's default transport (httpcore over anyio) spends more CPU per request than the rest of a
tool call's backend hop put together (sniffing the async library, typed-attribute lookups,
polling every pooled socket for readability on each request). This one speaks HTTP/1.1 on
asyncio streams directly: one ``write`` per request, pooled connections whose EOF asyncio
notices by itself, ``Content-Length``/chunked/until-close bodies, interim 1xx skipped. TLS
backends keep httpx's own transport.

It raises the httpx exceptions the retry rules in :mod:`gateway.tools.client` rely on:
``ConnectError``/``ConnectTimeout`` (nothing was sent), ``WriteTimeout``/``ReadTimeout``,
``RemoteProtocolError``/``ReadError``/``WriteError`` (the request may have reached the backend).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx

__all__ = ["Http1Transport"]

_MAX_HEAD = 64 * 1024  # bytes of status line + headers
_MAX_HEADERS = 200


class _Conn:
    __slots__ = ("idle_since", "loop", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.loop = asyncio.get_running_loop()
        self.idle_since = 0.0

    def usable(self, now: float, expiry: float) -> bool:
        return (now - self.idle_since < expiry and not self.reader.at_eof()
                and not self.writer.is_closing() and self.loop is asyncio.get_running_loop())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


def _timeout(request: httpx.Request, which: str) -> float | None:
    value = request.extensions.get("timeout", {}).get(which)
    return float(value) if value is not None else None


class Http1Transport(httpx.AsyncBaseTransport):
    """Keep-alive HTTP/1.1 over asyncio for ``http://`` URLs (``https`` is refused)."""

    def __init__(self, *, max_idle: int = 64, keepalive_expiry: float = 5.0) -> None:
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
        self._max_idle = max_idle
        self._expiry = keepalive_expiry

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http":
            raise httpx.UnsupportedProtocol(f"Http1Transport serves http:// only, not {url}")
        origin = (url.host, url.port or 80)
        body = await request.aread()
        head = [request.method.encode("ascii"), b" ", url.raw_path, b" HTTP/1.1\r\n"]
        for name, value in request.headers.raw:
            head += (name, b": ", value, b"\r\n")
        head.append(b"\r\n")
        data = b"".join(head) + body
        conn = self._checkout(origin)
        if conn is None:
            conn = await self._connect(request, origin)
        try:
            try:
                conn.writer.write(data)
                if conn.writer.transport.get_write_buffer_size():
                    async with asyncio.timeout(_timeout(request, "write")):
                        await conn.writer.drain()
            except TimeoutError as exc:
                raise httpx.WriteTimeout(str(exc) or "write timed out", request=request) from exc
            except OSError as exc:
                raise httpx.WriteError(str(exc), request=request) from exc
            try:
                async with asyncio.timeout(_timeout(request, "read")):
                    status, reason, headers, content, keep = await _read_response(
                        conn.reader, request)
            except TimeoutError as exc:
                raise httpx.ReadTimeout(str(exc) or "read timed out", request=request) from exc
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
                raise httpx.RemoteProtocolError(
                    f"malformed or incomplete response: {exc}", request=request) from exc
            except OSError as exc:
                raise httpx.ReadError(str(exc), request=request) from exc
        except BaseException:
            conn.close()
            raise
        if keep:
            self._checkin(origin, conn)
        else:
            conn.close()
        return httpx.Response(status, headers=headers, content=content, request=request,
                              extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason})

    def _checkout(self, origin: tuple[str, int]) -> _Conn | None:
        pool = self._idle.get(origin)
        now = time.monotonic()
        while pool:
            conn = pool.pop()
            if conn.usable(now, self._expiry):
                return conn
            conn.close()
        return None

    def _checkin(self, origin: tuple[str, int], conn: _Conn) -> None:
        pool = self._idle.setdefault(origin, [])
        if len(pool) >= self._max_idle:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        pool.append(conn)

    async def _connect(self, request: httpx.Request, origin: tuple[str, int]) -> _Conn:
        try:
            async with asyncio.timeout(_timeout(request, "connect")):
                reader, writer = await asyncio.open_connection(origin[0], origin[1],
                                                               limit=_MAX_HEAD)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(str(exc) or "connect timed out", request=request) from exc
        except OSError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        return _Conn(reader, writer)

    async def aclose(self) -> None:
        pools, self._idle = self._idle, {}
        for pool in pools.values():
            for conn in pool:
                conn.close()


async def _read_response(
    reader: asyncio.StreamReader, request: httpx.Request,
) -> tuple[int, bytes, list[tuple[bytes, bytes]], bytes, bool]:
    while True:
        line = await reader.readline()
        if not line:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.",
                                            request=request)
        version, _, rest = line.rstrip(b"\r\n").partition(b" ")
        code, _, reason = rest.partition(b" ")
        if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
            raise httpx.RemoteProtocolError(f"not an HTTP/1.x status line: {line[:80]!r}",
                                            request=request)
        status = int(code)
        headers: list[tuple[bytes, bytes]] = []
        size = len(line)
        while True:
            raw = await reader.readline()
            size += len(raw)
            if raw in (b"\r\n", b"\n"):
                break
            if not raw.endswith(b"\n") or size > _MAX_HEAD or len(headers) >= _MAX_HEADERS:
                raise httpx.RemoteProtocolError("response head incomplete or too large",
                                                request=request)
            name, sep, value = raw.partition(b":")
            if not sep:
                raise httpx.RemoteProtocolError(f"malformed header line {raw[:80]!r}",
                                                request=request)
            headers.append((name.strip(), value.strip()))
        if 100 <= status < 200 and status != 101:
            continue  # interim response (100 Continue, 103 Early Hints): the real one follows
        break
    fields = {name.lower(): value for name, value in headers}
    keep = version == b"HTTP/1.1" and b"close" not in fields.get(b"connection", b"").lower()
    if request.method == "HEAD" or status in (101, 204, 304):
        content = b""
    elif b"chunked" in fields.get(b"transfer-encoding", b"").lower():
        content = await _read_chunked(reader)
    elif b"content-length" in fields:
        content = await reader.readexactly(int(fields[b"content-length"]))
    else:
        content = await reader.read()  # delimited by the end of the connection
        keep = False
    return status, reason, headers, content, keep


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = await reader.readline()
        if not size_line.endswith(b"\n"):
            raise asyncio.IncompleteReadError(size_line, None)
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)  # CRLF after the chunk
