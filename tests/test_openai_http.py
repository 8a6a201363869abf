"""`ChatTransport`: what it sends (auth, JSON) and how it reads streams, against a real loopback server."""

from __future__ import annotations

import base64

import pytest
from aiohttp import web

from pacore_agent.backends.openai_http import ChatTransport
from pacore_agent.exceptions import MalformedResponseError, ServerError
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
