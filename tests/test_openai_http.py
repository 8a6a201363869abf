"""`ChatTransport`: what it sends (auth, JSON) and how it reads streams, against a real loopback server."""

from __future__ import annotations

import asyncio
import base64

import pytest
from aiohttp import web

from pacore_agent.backends.openai_compat import OpenAIBackend
from pacore_agent.backends.openai_http import ChatTransport
from pacore_agent.exceptions import EndpointConnectionError, MalformedResponseError, ServerError
from pacore_agent.serving.app import AppServer

pytestmark = pytest.mark.anyio


async def _echo(request: web.Request) -> web.Response:
    body = await request.json() if request.can_read_body else None
    return web.json_response(
        {"authorization": request.headers.get("Authorization"), "path": request.path, "body": body}
    )


async def _stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    # A keep-alive comment, an `event:` line and blank separators, as SGLang, vLLM and OpenAI send them.
    await response.write(b': ping\n\nevent: message\ndata: {"n": 1}\n\ndata:{"n": 2}\n\n')
    if request.query.get("fail"):
        await response.write(
            b'data: {"error": {"message": "engine died", "type": "InternalServerError", "code": 500}}\n\n'
        )
    await response.write(b"data: [DONE]\n\n")
    return response


async def _not_json(request: web.Request) -> web.Response:
    return web.Response(text="<html>ok</html>")


def _app() -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/v1/echo", _echo)
    app.router.add_post("/v1/stream", _stream)
    app.router.add_post("/v1/stream/fail", _stream)
    app.router.add_get("/v1/html", _not_json)
    return app


async def test_the_key_is_a_bearer_token_and_empty_without_one() -> None:
    async with AppServer(_app(), host="127.0.0.1", port=0) as server:
        keyed = ChatTransport(f"{server.root_url}/v1", api_key="sk-1", timeout=10, max_connections=4)
        keyless = ChatTransport(f"{server.root_url}/v1", api_key=None, timeout=10, max_connections=4)
        try:
            answer = await keyed.post("/echo", {"model": "m", "messages": []})
            assert answer == {
                "authorization": "Bearer sk-1",
                "path": "/v1/echo",
                "body": {"model": "m", "messages": []},
            }
            assert (await keyless.get("/echo"))["authorization"] == "Bearer EMPTY"
        finally:
            await keyed.aclose()
            await keyless.aclose()


async def test_credentials_in_the_url_go_as_basic_auth() -> None:
    async with AppServer(_app(), host="127.0.0.1", port=0) as server:
        url = f"{server.root_url}/v1".replace("http://", "http://ops:hunter2@")
        transport = ChatTransport(url, api_key="sk-1", timeout=10, max_connections=4)
        try:
            answer = await transport.get("/echo")
        finally:
            await transport.aclose()
    assert answer["authorization"] == "Basic " + base64.b64encode(b"ops:hunter2").decode()


async def test_streams_skip_comments_and_stop_at_done_and_errors_are_typed() -> None:
    async with AppServer(_app(), host="127.0.0.1", port=0) as server:
        transport = ChatTransport(f"{server.root_url}/v1", api_key=None, timeout=10, max_connections=4)
        try:
            events = [event async for event in transport.stream("/stream", {})]
            assert events == [{"n": 1}, {"n": 2}]
            seen = []
            with pytest.raises(ServerError, match="in the stream"):
                async for event in transport.stream("/stream/fail?fail=1", {}):
                    seen.append(event)
            assert seen == [{"n": 1}, {"n": 2}]
            with pytest.raises(MalformedResponseError, match="malformed response"):
                await transport.get("/html")
        finally:
            await transport.aclose()


async def _long_event(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    # One event of 700 kB: a long answer sent whole, past aiohttp's default line limit of 512 KiB.
    await response.write(b'data: {"text": "' + b"a" * 700_000 + b'"}\n\ndata: [DONE]\n\n')
    return response


async def _fail(request: web.Request) -> web.Response:
    return web.json_response({"error": {"message": "boom", "type": "server_error"}}, status=500)


async def test_an_event_longer_than_aiohttps_default_line_limit_is_read() -> None:
    app = web.Application()
    app.router.add_post("/v1/long", _long_event)
    async with AppServer(app, host="127.0.0.1", port=0) as server:
        transport = ChatTransport(f"{server.root_url}/v1", api_key=None, timeout=10, max_connections=4)
        try:
            events = [event async for event in transport.stream("/long", {})]
        finally:
            await transport.aclose()
    assert [len(event["text"]) for event in events] == [700_000]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_a_garbled_status_line_is_a_lost_connection(stream: bool) -> None:
    async def garble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 two hundred OK\r\n\r\n")  # what a broken proxy may send
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(garble, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    transport = ChatTransport(f"http://127.0.0.1:{port}/v1", api_key=None, timeout=10, max_connections=4)
    try:
        with pytest.raises(EndpointConnectionError, match="could not talk to"):
            if stream:
                async for _ in transport.stream("/chat/completions", {}):
                    pass
            else:
                await transport.post("/chat/completions", {})
    finally:
        await transport.aclose()
        listener.close()
        await listener.wait_closed()


async def test_a_password_in_the_url_is_in_no_message() -> None:
    app = web.Application()
    app.router.add_get("/v1/fail", _fail)
    async with AppServer(app, host="127.0.0.1", port=0) as server:
        url = f"{server.root_url}/v1".replace("http://", "http://ops:hunter2@")
        backend = OpenAIBackend(url)
        try:
            with pytest.raises(ServerError) as failed:
                await backend.transport.get("/fail")
        finally:
            await backend.aclose()
    for text in (str(failed.value), backend.name, backend.base_url, repr(backend)):
        assert "hunter2" not in text and "ops" not in text
    masked = f"{server.root_url}/v1".replace("http://", "http://***@")
    assert str(failed.value).startswith(f"{masked} answered 500: boom")
