"""The dev edge tells the services who called it: X-Forwarded-For is its own peer, never what the
client claimed (the API's sign-in throttle counts per client address, issue 17 H1)."""

from __future__ import annotations

import httpx
from blametrail_devstack.edge import Edge, forward_headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send


def test_forwarded_for_is_the_peer_whatever_the_client_sent() -> None:
    sent = [
        ("X-Forwarded-For", "6.6.6.6"),
        ("x-real-ip", "6.6.6.7"),
        ("Forwarded", "for=6.6.6.8"),
        ("Connection", "keep-alive"),
        ("Accept", "text/html"),
    ]
    assert forward_headers(sent, "203.0.113.9") == [
        ("Accept", "text/html"),
        ("x-forwarded-for", "203.0.113.9"),
    ]
    assert forward_headers(sent, None) == [("Accept", "text/html")]


async def _echo(scope: Scope, receive: Receive, send: Send) -> None:
    request = Request(scope, receive)
    await JSONResponse({"xff": request.headers.getlist("x-forwarded-for")})(scope, receive, send)


async def test_the_upstream_sees_only_the_edges_peer() -> None:
    edge = Edge("http://ingest", "http://api")
    edge.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=_echo))
    transport = httpx.ASGITransport(app=edge, client=("198.51.100.4", 5555))
    async with edge.client, httpx.AsyncClient(transport=transport, base_url="http://edge") as c:
        answer = await c.post(
            "/api/v1/sessions",
            headers=[("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "6.6.6.7, 1.2.3.4")],
        )
    assert answer.json() == {"xff": ["198.51.100.4"]}
