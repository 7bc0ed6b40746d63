"""The lean HTTP/1.1 transport against raw servers: bodies by length, chunks or close,
keep-alive reuse, interim responses, and the httpx exceptions the retry rules depend on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from tools_support import free_port_refusing

from gateway.tools.http1 import Http1Transport

Answer = Callable[[bytes], bytes | None]  # request head -> raw response (None: hang up)


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[int], list[Answer]]]:
    """A raw HTTP server: answers[i] answers the i-th request; returns (url, connections)."""
    connections: list[int] = []
    answers: list[Answer] = []
    served = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        connections.append(1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                body = await reader.readexactly(length)
                answer = answers[served](head + body)
                served += 1
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if b"Connection: close" in answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", connections, answers
    srv.close()


def fixed(raw: bytes) -> Answer:
    return lambda _req: raw


async def test_bodies_keep_alive_and_interim(
        server: tuple[str, list[int], list[Answer]]) -> None:
    url, connections, answers = server
    seen: list[bytes] = []

    def echo(req: bytes) -> bytes:
        seen.append(req)
        return b"HTTP/1.1 201 Created\r\nContent-Length: 11\r\nX-A: 1\r\n\r\n{\"ok\":true}"

    answers += [
        echo,
        fixed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"4;ext=1\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\nTrailer: x\r\n\r\n"),
        fixed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"),
        fixed(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n[1,2]"),
    ]
    async with httpx.AsyncClient(base_url=url, transport=Http1Transport()) as client:
        r = await client.post("/t?x=a%2Fb", json={"k": "v"}, headers={"Idempotency-Key": "K"})
        assert r.status_code == 201 and r.json() == {"ok": True} and r.headers["x-a"] == "1"
        assert r.reason_phrase == "Created"
        assert seen[0].startswith(b"POST /t?x=a%2Fb HTTP/1.1\r\n")
        assert b"\r\nIdempotency-Key: K\r\n" in seen[0] and seen[0].endswith(b'{"k":"v"}')
        assert (await client.get("/c")).json() == {"a": 1}
        r = await client.get("/n")
        assert r.status_code == 204 and r.content == b""
        assert (await client.get("/e")).json() == [1, 2]
    assert len(connections) == 1  # kept alive until the server said close


async def test_server_hangs_up_without_answer_is_a_transport_error(
        server: tuple[str, list[int], list[Answer]]) -> None:
    url, _connections, answers = server
    answers += [lambda _req: None]
    async with httpx.AsyncClient(base_url=url, transport=Http1Transport()) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post("/x", json={})


async def test_garbage_status_line_is_a_protocol_error(
        server: tuple[str, list[int], list[Answer]]) -> None:
    url, _connections, answers = server
    answers += [fixed(b"SSH-2.0-OpenSSH\r\n\r\n")]
    async with httpx.AsyncClient(base_url=url, transport=Http1Transport()) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get("/x")


async def test_closed_idle_connection_is_not_reused(
        server: tuple[str, list[int], list[Answer]]) -> None:
    url, connections, answers = server
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
    answers += [fixed(ok), lambda _req: None, fixed(ok)]
    async with httpx.AsyncClient(base_url=url, transport=Http1Transport()) as client:
        assert (await client.get("/1")).status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get("/2")  # the server hangs up on this one
        assert (await client.get("/3")).status_code == 200
    assert len(connections) == 2


async def test_refused_connect_and_read_timeout() -> None:
    async with httpx.AsyncClient(base_url=free_port_refusing(),
                                 transport=Http1Transport()) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("/x")

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        await asyncio.sleep(1)
        writer.close()

    srv = await asyncio.start_server(silent, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
    try:
        async with httpx.AsyncClient(base_url=url, transport=Http1Transport()) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.get("/x", timeout=httpx.Timeout(5.0, read=0.2))
    finally:
        srv.close()


async def test_https_is_refused() -> None:
    async with httpx.AsyncClient(transport=Http1Transport()) as client:
        with pytest.raises(httpx.UnsupportedProtocol):
            await client.get("https://127.0.0.1:1/")
