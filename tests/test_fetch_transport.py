"""The transport (aiohttp's client under fetch/client.py) against a scripted TCP server on
loopback: connection reuse, body framing, truncation, timeouts, stray bytes, keep-alive.

Each test's server answers every request it reads with the next scripted reply (raw bytes, so
any framing or misbehaviour can be written down) and counts the connections it accepted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx
import pytest

from downloader.fetch import client
from downloader.fetch.client import Transport, TruncatedBody, body_chunks, header_map
from downloader.guard import Guard
from downloader.settings import load_settings

HOST = "127.0.0.2"
Reply = bytes | Callable[[asyncio.StreamWriter], Awaitable[None]]


class ScriptedServer:
    def __init__(self, replies: list[Reply]) -> None:
        self.replies = list(replies)
        self.connections = 0
        self.closed_by_client = 0  # connections whose client hung up first
        self.requests: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    def url(self, path: str = "/x.jpg") -> str:
        return f"http://{HOST}:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.replies:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                reply = self.replies.pop(0)
                if isinstance(reply, bytes):
                    writer.write(reply)
                    await writer.drain()
                else:
                    await reply(writer)
                if writer.is_closing():
                    return
            await reader.read()  # the script is done: wait for the client to hang up
            self.closed_by_client += 1
        except asyncio.IncompleteReadError:
            self.closed_by_client += 1
        except ConnectionError:
            pass
        finally:
            writer.close()


def ok(body: bytes, *extra: str) -> bytes:
    head = ["HTTP/1.1 200 OK", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def close_after(data: bytes) -> Callable[[asyncio.StreamWriter], Awaitable[None]]:
    async def reply(writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        writer.close()

    return reply


def stall_after(data: bytes) -> Callable[[asyncio.StreamWriter], Awaitable[None]]:
    async def reply(writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        await asyncio.sleep(5)

    return reply


class Answer:
    """What the tests look at: status, reason, headers (lower-cased names)."""

    def __init__(self, status: int, reason: str, headers: dict[str, str]) -> None:
        self.status_code = status
        self.reason_phrase = reason
        self.headers = headers


async def get(transport: Transport, url: str, *, keep: int | None = None) -> tuple[Answer, bytes]:
    """Send a GET and read its body (only `keep` bytes of it, then close, if given)."""
    try:
        response = await transport.send(httpx.URL(url), {"User-Agent": "test"})
    except httpx.TransportError as exc:
        exc.request = httpx.Request("GET", url)
        raise
    body = bytearray()
    try:
        async for chunk in body_chunks(response):
            body += chunk
            if keep is not None and len(body) >= keep:
                break
    finally:
        transport.release(response, complete=response.content.at_eof())
    answer = Answer(response.status, response.reason or "", header_map(response.raw_headers))
    return answer, bytes(body)


def run(
    replies: list[Reply],
    scenario: Callable[[Transport, ScriptedServer], Awaitable[None]],
    *,
    read: float = 5.0,
) -> ScriptedServer:
    settings = load_settings(allowed_private_networks=["127.0.0.0/8"], http_read_timeout=read)

    async def main() -> ScriptedServer:
        async with ScriptedServer(replies) as server:
            transport = Transport(settings, Guard(settings))
            try:
                await scenario(transport, server)
            finally:
                await transport.aclose()
            return server

    return asyncio.run(main())


def test_a_connection_is_reused_for_the_next_request() -> None:
    bodies = [b"a" * 1000, b"b" * 70_000, b"c"]

    async def scenario(transport: Transport, server: ScriptedServer) -> None:
        for body in bodies:
            response, got = await get(transport, server.url())
            assert response.status_code == 200 and got == body

    server = run([ok(body) for body in bodies], scenario)
    assert server.connections == 1
    assert server.requests[0].startswith(b"GET /x.jpg HTTP/1.1\r\n")
    assert f"host: {HOST}:{server.port}".encode() in server.requests[0].lower()


def test_chunked_bodies_are_joined_and_the_connection_reused() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )

    async def scenario(transport: Transport, server: ScriptedServer) -> None:
        for _ in range(2):
            _, got = await get(transport, server.url())
            assert got == b"hello world"

    assert run([chunked, chunked], scenario).connections == 1


def test_connection_close_and_half_read_bodies_are_not_reused() -> None:
    async def scenario(transport: Transport, server: ScriptedServer) -> None:
        _, got = await get(transport, server.url())
        assert got == b"closing"
        _, partial = await get(transport, server.url(), keep=10)  # closed before the end
        assert partial
        _, got = await get(transport, server.url())
        assert got == b"last"

    replies: list[Reply] = [
        ok(b"closing", "Connection: close"),
        ok(b"x" * 300_000),
        ok(b"last"),
    ]
    # the first connection closes after its answer; the half-read one is dropped too
    assert run(replies, scenario).connections == 3


def test_a_body_without_length_ends_when_the_server_closes() -> None:
    async def scenario(transport: Transport, server: ScriptedServer) -> None:
        response, got = await get(transport, server.url())
        assert response.status_code == 200
        assert got == b"until the end"

    run(
        [close_after(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n\r\nuntil the end")], scenario
    )


def test_a_short_body_is_truncated() -> None:
    async def scenario(transport: Transport, server: ScriptedServer) -> None:
        with pytest.raises(TruncatedBody):
            await get(transport, server.url())

    run([close_after(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")], scenario)


def test_a_close_before_any_answer_is_a_protocol_error() -> None:
    async def scenario(transport: Transport, server: ScriptedServer) -> None:
        with pytest.raises(httpx.RemoteProtocolError) as info:
            await get(transport, server.url())
        assert not isinstance(info.value, TruncatedBody)
        assert info.value.request.url == server.url()

    run([close_after(b"")], scenario)


def test_a_malformed_answer_is_a_protocol_error() -> None:
    async def scenario(transport: Transport, server: ScriptedServer) -> None:
        with pytest.raises(httpx.RemoteProtocolError):
            await get(transport, server.url())

    run([b"SMTP ready\r\n\r\n"], scenario)


def test_interim_answers_are_skipped_and_the_reason_phrase_kept() -> None:
    async def scenario(transport: Transport, server: ScriptedServer) -> None:
        response, got = await get(transport, server.url())
        assert response.status_code == 203
        assert response.reason_phrase == "Fine By Me"
        assert response.headers["x-tag"] == "kept"
        assert got == b"ok"

    reply = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 203 Fine By Me\r\nContent-Length: 2\r\nX-Tag: kept\r\n\r\nok"
    )
    run([reply], scenario)


def test_silence_before_the_head_or_in_the_body_is_a_read_timeout() -> None:
    async def scenario(transport: Transport, server: ScriptedServer) -> None:
        with pytest.raises(httpx.ReadTimeout):
            await get(transport, server.url())
        with pytest.raises(httpx.ReadTimeout):
            await get(transport, server.url())

    replies: list[Reply] = [
        stall_after(b""),
        stall_after(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"),
    ]
    run(replies, scenario, read=0.3)


def test_a_big_body_read_slowly_arrives_whole() -> None:
    """A body read slower than it arrives: aiohttp's flow control pauses and resumes the
    socket; every byte arrives and the connection stays good."""
    body = bytes(range(256)) * 16_384  # 4 MiB

    async def scenario(transport: Transport, server: ScriptedServer) -> None:
        response = await transport.send(httpx.URL(server.url()), {})
        got = bytearray()
        async for chunk in body_chunks(response):
            got += chunk
            await asyncio.sleep(0.001)
        transport.release(response, complete=response.content.at_eof())
        assert bytes(got) == body
        _, again = await get(transport, server.url())  # and the connection is still good
        assert again == b"next"

    assert run([ok(body), ok(b"next")], scenario).connections == 1


def test_a_refused_connection_is_a_connect_error() -> None:
    async def scenario(transport: Transport, server: ScriptedServer) -> None:
        await server.__aexit__()
        await asyncio.sleep(0.05)
        with pytest.raises(httpx.ConnectError):
            await get(transport, server.url())

    run([], scenario)


def test_a_pooled_connection_that_receives_stray_bytes_is_dropped() -> None:
    """Bytes nobody asked for (here half of an answer) would otherwise be read as the start of
    the next answer on that connection."""

    async def answer_then_stray(writer: asyncio.StreamWriter) -> None:
        writer.write(ok(b"first"))
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nstray")
        await writer.drain()

    async def scenario(transport: Transport, server: ScriptedServer) -> None:
        _, got = await get(transport, server.url())
        assert got == b"first"
        await asyncio.sleep(0.3)  # the stray bytes arrive while the connection is pooled
        _, got = await get(transport, server.url())
        assert got == b"good"

    server = run([answer_then_stray, ok(b"good")], scenario)
    assert server.connections == 2


def test_idle_connections_past_their_keep_alive_are_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not only when their host is asked again: a job over many hosts would otherwise keep a
    socket open per host."""
    monkeypatch.setattr(client, "KEEPALIVE_SECONDS", 0.2)

    async def scenario(transport: Transport, server: ScriptedServer) -> None:
        async with ScriptedServer([ok(b"other")]) as other:
            _, got = await get(transport, other.url())
            assert got == b"other"
            await asyncio.sleep(0.1)
            assert other.closed_by_client == 0  # still pooled
            await asyncio.sleep(0.3)
            _, got = await get(transport, server.url())  # another host's exchange
            assert got == b"here"
            await asyncio.sleep(0.1)
            assert other.closed_by_client == 1  # the expired one was closed meanwhile

    run([ok(b"here")], scenario)
