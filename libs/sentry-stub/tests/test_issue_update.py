"""The stand-in's issue update: scope check, answers as Sentry, and the webhook each installed app
is sent for a change (signed with its own secret, the acting app as actor)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from blametrail_common.signature import sign
from blametrail_devstack.testkit import until
from blametrail_sentry_stub.server import serve
from blametrail_sentry_stub.state import StubState
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    got: list[tuple[dict[str, str], bytes]] = []

    async def hook(request: Request) -> Response:
        got.append((dict(request.headers), await request.body()))
        return Response(status_code=202)

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(
            Starlette(routes=[Route("/hook", hook, methods=["POST"])]),
            log_level="warning",
            lifespan="off",
        )
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))

    async def started() -> bool:
        return bool(server.started)

    await until("the receiver to start", started, 30, 0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/hook", got
    server.should_exit = True
    await task
    sock.close()


async def test_an_update_changes_the_issue_and_every_installed_app_hears_of_it(
    receiver: Any,
) -> None:
    url, got = receiver
    state = StubState()
    state.issue_store.template = False
    issue = state.issue_store.create("acme", "checkout-api", issue_id="101")
    ours = state.apps.install("acme", url, "our-secret", name="BlameTrail")
    other = state.apps.install(
        "acme", url, "their-secret", name="Other", scopes=frozenset({"event:read"})
    )
    state.apps.install("globex", url, "elsewhere")  # another org's app hears nothing
    state.tokens["ours"] = _token("ours", "acme", ours.installation)
    state.tokens["theirs"] = _token("theirs", "acme", other.installation)
    async with serve(state) as base, httpx.AsyncClient(base_url=base) as http:
        path = f"/api/0/organizations/acme/issues/{issue['id']}/"
        done = await http.put(path, json={"status": "resolved"}, headers=_auth("ours"))
        assert done.status_code == 200, done.text
        assert (done.json()["status"], done.json()["substatus"]) == ("resolved", None)
        await state.apps.drain()
        assert len(got) == 2
        for headers, body in got:
            doc = orjson.loads(body)
            assert (doc["action"], doc["data"]["issue"]["id"]) == ("resolved", "101")
            assert doc["actor"] == {"type": "application", "id": ours.uuid, "name": "BlameTrail"}
            secret = {ours.installation: "our-secret", other.installation: "their-secret"}[
                doc["installation"]["uuid"]
            ]
            assert headers["sentry-hook-signature"] == sign(body, secret)
            assert headers["sentry-hook-resource"] == "issue"
        # the same state again changes nothing and sends nothing
        again = await http.put(path, json={"status": "resolved"}, headers=_auth("ours"))
        assert again.status_code == 200
        await state.apps.drain()
        assert len(got) == 2
        # acknowledge as Sentry's "ongoing": unresolved again, one webhook per app
        ack = await http.put(
            path, json={"status": "unresolved", "substatus": "ongoing"}, headers=_auth("ours")
        )
        assert ack.json()["substatus"] == "ongoing"
        await state.apps.drain()
        assert [orjson.loads(b)["action"] for _, b in got[2:]] == ["unresolved", "unresolved"]


async def test_refusals_answer_as_sentry(receiver: Any) -> None:
    url, got = receiver
    state = StubState()
    state.issue_store.template = False
    state.issue_store.create("acme", "checkout-api", issue_id="102")
    reader = state.apps.install("acme", url, "s", scopes=frozenset({"event:read"}))
    state.tokens["reader"] = _token("reader", "acme", reader.installation)
    globex = state.add_internal_token("globex")
    writer = state.add_internal_token("acme")
    async with serve(state) as base, httpx.AsyncClient(base_url=base) as http:
        path = "/api/0/organizations/acme/issues/102/"
        no_scope = await http.put(path, json={"status": "resolved"}, headers=_auth("reader"))
        assert no_scope.status_code == 403
        assert no_scope.json() == {"detail": "You do not have permission to perform this action."}
        assert (
            await http.put(path, json={"status": "resolved"}, headers=_auth(globex))
        ).status_code == 403
        assert (await http.put(path, json={"status": "resolved"})).status_code == 401
        missing = await http.put(
            "/api/0/organizations/acme/issues/999/",
            json={"status": "resolved"},
            headers=_auth(writer),
        )
        assert missing.status_code == 404
        for bad in ({"status": "done"}, {"colour": "red"}, [], {"substatus": "ongoing"}):
            answer = await http.put(path, json=bad, headers=_auth(writer))
            assert answer.status_code == 400, bad
        state.faults.append(_fault("issue_update", "503"))
        failed = await http.put(path, json={"status": "resolved"}, headers=_auth(writer))
        assert failed.status_code == 503
    assert state.issue_store.get("acme", "102")["status"] == "unresolved"  # type: ignore[index]
    await state.apps.drain()
    assert got == []


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _token(token: str, org: str, installation: str) -> Any:
    from blametrail_sentry_stub.state import Token

    return Token(token, org, installation=installation)


def _fault(route: str, kind: str) -> Any:
    from blametrail_sentry_stub.state import Fault

    return Fault(route, kind)  # type: ignore[arg-type]
