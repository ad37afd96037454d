"""HTTP face of the stub: Sentry's documented paths plus ``/_stub/`` control routes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
from blametrail_common.signature import sign
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from blametrail_sentry_stub import issue_update, issues
from blametrail_sentry_stub.state import Fault, StubState, Token, rate_key

Handler = Callable[[Request, StubState, Token | None], Awaitable[Response]]
JWT_GRANT = "urn:sentry:params:oauth:grant-type:jwt-bearer"


class _DropConnection(Response):
    """Starts a response it never finishes: the client sees the connection cut mid-answer."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"1000")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"partial', "more_body": True})
        raise ConnectionResetError("stub: connection dropped on purpose")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _guard(
    name: str, handler: Handler, state: StubState, *, auth: bool = True
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        state.requests.append({"route": name, "method": request.method, "path": request.url.path})
        fault = state.take_fault(name)
        if fault is not None and fault.kind != "lost":
            early = await _apply(fault)
            if early is not None:
                return early
        token = state.token_for(request.headers.get("authorization")) if auth else None
        if auth and token is None:
            return JSONResponse({"detail": "Invalid token"}, status_code=401)
        caller = (
            f"org:{token.org_slug}"
            if token
            else f"ip:{request.client.host}"
            if request.client
            else "anon"
        )
        key = rate_key(caller, name, request.method)
        allowed, headers = state.rate(key)
        if not allowed:
            detail = (
                f"You are attempting to use this endpoint too frequently. Limit is "
                f"{state.rate_limit} requests in {state.rate_window_s} seconds"
            )
            return JSONResponse({"detail": detail}, status_code=429, headers=headers)
        if not state.enter(key, headers):
            detail = (
                "You are attempting to go above the allowed concurrency for this endpoint. "
                f"Concurrency limit is {state.concurrent_limit}"
            )
            return JSONResponse({"detail": detail}, status_code=429, headers=headers)
        try:
            if state.latency_s > 0:
                await asyncio.sleep(state.latency_s)
            response = await handler(request, state, token)
        finally:
            state.leave(key)
        if fault is not None and fault.kind == "lost":  # done here, the answer never arrives
            return _DropConnection()
        response.headers.update(headers)
        return response

    return endpoint


async def _apply(fault: Fault) -> Response | None:
    if fault.kind == "slow":
        await asyncio.sleep(fault.delay_s)
        return None
    if fault.kind == "reset":
        return _DropConnection()
    if fault.kind == "401":
        return JSONResponse({"detail": "Invalid token"}, status_code=401)
    if fault.kind == "huge":  # a faulty or hostile server: an answer without end, near enough
        return Response(
            b'{"pad": "' + b"x" * fault.size_bytes + b'"}', media_type="application/json"
        )
    if fault.kind == "429":
        return JSONResponse(
            {"detail": "You are attempting to use this endpoint too frequently."},
            status_code=429,
            headers={
                "X-Sentry-Rate-Limit-Remaining": "0",
                # A queued fault says "0" (no reset known); a storm the next window, as Sentry.
                "X-Sentry-Rate-Limit-Reset": str(int(time.time()) + 1 if fault.storm else 0),
            },
        )
    return JSONResponse({"detail": "Internal Error"}, status_code=int(fault.kind))


def _issue_or_404(
    request: Request, state: StubState, token: Token | None
) -> dict[str, Any] | Response:
    org = request.path_params.get("org") or (token.org_slug if token else "")
    if token is not None and token.org_slug != org:
        return JSONResponse({"detail": "You do not have permission to perform this action."}, 403)
    found = state.issue(org, request.path_params["issue_id"])
    return (
        found
        if found is not None
        else JSONResponse({"detail": "The requested resource does not exist"}, 404)
    )


def _json(doc: Any) -> Response:
    """A JSON answer rendered by orjson (Starlette's JSONResponse uses the slower json)."""
    return Response(orjson.dumps(doc), media_type="application/json")


async def latest_event(request: Request, state: StubState, token: Token | None) -> Response:
    found = _issue_or_404(request, state, token)
    return found if isinstance(found, Response) else _json(found["latest_event"])


async def issue_tags(request: Request, state: StubState, token: Token | None) -> Response:
    found = _issue_or_404(request, state, token)
    return found if isinstance(found, Response) else _json(found["tags"])


def _token_body(tok: Token, issued_at: float) -> dict[str, Any]:
    return {
        "id": secrets.token_hex(4),
        "scopes": ["event:read", "event:write", "project:read"],
        "application": None,
        "expiresAt": _iso(tok.expires_at or 0),
        "dateCreated": _iso(issued_at),
        "state": None,
        "token": tok.token,
        "refreshToken": tok.refresh_token,
    }


def _jwt_ok(authorization: str | None, client_id: str, secret: str, now: float) -> bool:
    if not authorization or not authorization.startswith("Bearer "):
        return False
    parts = authorization[len("Bearer ") :].split(".")
    if len(parts) != 3:
        return False
    signing_input = f"{parts[0]}.{parts[1]}".encode()
    expected = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    try:
        given = base64.urlsafe_b64decode(parts[2] + "=" * (-len(parts[2]) % 4))
        claims = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        return False
    return (
        hmac.compare_digest(expected, given)
        and claims.get("iss") == client_id
        and float(claims.get("exp", 0)) > now
    )


async def authorizations(request: Request, state: StubState, _: Token | None) -> Response:
    inst = state.installations.get(request.path_params["uuid"])
    if inst is None:
        return JSONResponse({"detail": "Installation not found"}, 404)
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return JSONResponse({"detail": "Invalid JSON"}, 400)
    grant_type = body.get("grant_type")
    if grant_type == JWT_GRANT:
        if not _jwt_ok(
            request.headers.get("authorization"), inst.client_id, inst.client_secret, state.now()
        ):
            return JSONResponse({"detail": "Invalid JWT"}, 401)
        return JSONResponse(_token_body(state.issue_token(inst), state.now()), 201)
    if body.get("client_id") != inst.client_id or body.get("client_secret") != inst.client_secret:
        return JSONResponse({"detail": "Invalid credentials"}, 401)
    if grant_type == "authorization_code":
        grant = state.grants.pop(str(body.get("code")), None)
        if grant is None or grant[0] != inst.uuid:
            return JSONResponse({"detail": "Could not find grant for given code"}, 401)
        if grant[1] <= state.now():
            return JSONResponse({"detail": "Grant has already expired"}, 401)
        return JSONResponse(_token_body(state.issue_token(inst), state.now()), 201)
    if grant_type == "refresh_token":
        current = next(
            (
                t
                for t in state.tokens.values()
                if t.installation == inst.uuid and t.refresh_token == body.get("refresh_token")
            ),
            None,
        )
        if current is None:
            return JSONResponse({"detail": "Invalid refresh token"}, 401)
        return JSONResponse(_token_body(state.issue_token(inst), state.now()), 201)
    return JSONResponse({"detail": "Invalid grant_type"}, 403)


async def installation(request: Request, state: StubState, token: Token | None) -> Response:
    inst = state.installations.get(request.path_params["uuid"])
    if inst is None or token is None or token.installation != inst.uuid:
        return JSONResponse({"detail": "The requested resource does not exist"}, 404)
    body = orjson.loads(await request.body() or b"{}")
    if body.get("status") == "installed":
        inst.status = "installed"
    return JSONResponse(
        {"uuid": inst.uuid, "status": inst.status, "organization": {"slug": inst.org_slug}}
    )


async def external_issues(request: Request, state: StubState, token: Token | None) -> Response:
    inst = state.installations.get(request.path_params["uuid"])
    if inst is None or token is None or token.installation != inst.uuid:
        return JSONResponse({"detail": "The requested resource does not exist"}, 404)
    if request.method == "DELETE":
        gone = state.external_issues.pop(request.path_params.get("external_id", ""), None)
        return Response(status_code=204 if gone else 404)
    body = orjson.loads(await request.body())
    missing = [k for k in ("issueId", "webUrl", "project", "identifier") if k not in body]
    if missing:
        return JSONResponse({k: ["This field is required."] for k in missing}, 400)
    ext_id = str(len(state.external_issues) + 1)
    record = {
        "id": ext_id,
        "issueId": str(body["issueId"]),
        "serviceType": "blametrail",
        "displayName": f"{body['project']}#{body['identifier']}",
        "webUrl": body["webUrl"],
    }
    state.external_issues[ext_id] = record
    return JSONResponse(record, 201)


def _same_org(request: Request, token: Token | None) -> Response | None:
    if token is not None and token.org_slug != request.path_params["org"]:
        return JSONResponse({"detail": "You do not have permission to perform this action."}, 403)
    return None


async def releases(request: Request, state: StubState, token: Token | None) -> Response:
    denied = _same_org(request, token)
    if denied is not None:
        return denied
    found = state.releases.get(request.path_params["org"], [])
    version = request.path_params.get("version")
    if version is None:
        per_page = int(request.query_params.get("per_page", "100"))
        return JSONResponse(found[:per_page])
    one = next((r for r in found if r.get("version") == version), None)
    if one is None:
        return JSONResponse({"detail": "The requested resource does not exist"}, 404)
    return JSONResponse(one)


async def org_projects(request: Request, state: StubState, token: Token | None) -> Response:
    """``GET /organizations/{org}/projects/``: 100 a page, cursor pagination in ``Link``."""
    denied = _same_org(request, token)
    if denied is not None:
        return denied
    found = state.projects.get(request.path_params["org"], [])
    cursor = request.query_params.get("cursor", "0:0:0")
    try:
        start = int(cursor.split(":")[1])
    except (IndexError, ValueError):
        return JSONResponse({"detail": "Invalid cursor parameter."}, 400)
    page, more = found[start : start + 100], start + 100 < len(found)
    base = str(request.url.replace(query=""))
    link = (
        f'<{base}?cursor=0:{max(start - 100, 0)}:1>; rel="previous"; results="{str(start > 0).lower()}";'
        f' cursor="0:{max(start - 100, 0)}:1", <{base}?cursor=0:{start + 100}:0>; rel="next";'
        f' results="{str(more).lower()}"; cursor="0:{start + 100}:0"'
    )
    return JSONResponse(page, headers={"Link": link})


async def release_deploys(request: Request, state: StubState, token: Token | None) -> Response:
    denied = _same_org(request, token)
    if denied is not None:
        return denied
    key = (request.path_params["org"], request.path_params["version"])
    if not any(r.get("version") == key[1] for r in state.releases.get(key[0], [])):
        return JSONResponse({"detail": "The requested resource does not exist"}, 404)
    return JSONResponse(state.deploys.get(key, []))


async def external_install(request: Request) -> Response:
    """Sentry's install page, as if the signed-in user picked ``?organization=`` (default
    ``globex``) and pressed Install: an installation and its grant, the ``installation.created``
    webhook sent (signed), and the browser redirected with ``installationId``, ``code``,
    ``orgSlug``."""
    state: StubState = request.app.state.stub
    app = state.public_app
    if app is None or app.slug != request.path_params["slug"]:
        return JSONResponse({"detail": "No such app"}, 404)
    org = request.query_params.get("organization", "globex")
    inst, code = state.add_installation(org, app.client_id, app.client_secret)
    body = orjson.dumps(
        {
            "action": "created",
            "installation": {"uuid": inst.uuid},
            "data": {
                "installation": {
                    "app": {"uuid": "stub-app", "slug": app.slug},
                    "organization": {"slug": org},
                    "uuid": inst.uuid,
                    "status": "pending",
                    "code": code,
                }
            },
            "actor": {"type": "user", "id": 1, "name": "Stub User"},
        }
    )
    headers = {
        "Content-Type": "application/json",
        "Request-ID": secrets.token_hex(16),
        "Sentry-Hook-Resource": "installation",
        "Sentry-Hook-Timestamp": str(int(state.now())),
        "Sentry-Hook-Signature": sign(body, app.client_secret),
    }
    async with httpx.AsyncClient() as http:  # Sentry sends it around the same time
        with contextlib.suppress(httpx.HTTPError):
            await http.post(app.webhook_url, content=body, headers=headers, timeout=5)
    query = urlencode({"installationId": inst.uuid, "code": code, "orgSlug": org})
    return RedirectResponse(f"{app.redirect_url}?{query}", 302)


def _control_routes(state: StubState) -> list[Route]:
    async def faults(request: Request) -> Response:
        body = orjson.loads(await request.body())
        state.faults.append(
            Fault(
                body["route"],
                body["kind"],
                int(body.get("count", 1)),
                float(body.get("delay_s", 0)),
                size_bytes=int(body.get("size_bytes", 0)),
            )
        )
        return JSONResponse({"queued": len(state.faults)})

    async def storm(request: Request) -> Response:
        if request.method == "DELETE":
            return JSONResponse({"ended": state.calm()})
        body = orjson.loads(await request.body())
        began = state.storm(
            body["kind"],
            float(body["duration_s"]),
            body.get("route", "*"),
            float(body.get("delay_s", 0)),
        )
        return JSONResponse({"route": began.route, "kind": began.kind, "until": began.until})

    async def clock(request: Request) -> Response:
        state.clock_offset_s += float(orjson.loads(await request.body())["advance_s"])
        return JSONResponse({"now": state.now()})

    async def token(request: Request) -> Response:
        body = orjson.loads(await request.body())
        return JSONResponse({"token": state.add_internal_token(body["org"], body.get("token"))})

    async def installations(request: Request) -> Response:
        """``POST /_stub/installations {"org", "uuid"?, "token"?}``: an internal integration
        installed in ``org`` as Sentry would have made it (its uuid is what its webhooks name),
        with ``token`` as its token; answers ``{"uuid", "token"}``."""
        body = orjson.loads(await request.body())
        inst, tok = state.add_internal_installation(
            body["org"], body.get("uuid"), body.get("token")
        )
        return JSONResponse({"uuid": inst.uuid, "token": tok}, 201)

    async def external_issues_made(_: Request) -> Response:
        """``GET /_stub/external-issues``: every external issue (link) made, oldest first."""
        return JSONResponse(list(state.external_issues.values()))

    async def requests(_: Request) -> Response:
        return JSONResponse(state.requests)

    async def budget(request: Request) -> Response:
        """The rate limiter's settings and 429 counts; POST changes the settings."""
        if request.method == "POST":
            body = orjson.loads(await request.body())
            state.rate_limit = int(body.get("rate_limit", state.rate_limit))
            state.rate_window_s = int(body.get("rate_window_s", state.rate_window_s))
            state.concurrent_limit = int(body.get("concurrent_limit", state.concurrent_limit))
            state.latency_s = float(body.get("latency_s", state.latency_s))
        return JSONResponse(
            {
                "rate_limit": state.rate_limit,
                "rate_window_s": state.rate_window_s,
                "concurrent_limit": state.concurrent_limit,
                "latency_s": state.latency_s,
                "limited": state.limited,
                "requests": len(state.requests),
            }
        )

    return [
        Route("/_stub/faults", faults, methods=["POST"]),
        Route("/_stub/storm", storm, methods=["POST", "DELETE"]),
        Route("/_stub/clock", clock, methods=["POST"]),
        Route("/_stub/tokens", token, methods=["POST"]),
        Route("/_stub/requests", requests),
        Route("/_stub/installations", installations, methods=["POST"]),
        Route("/_stub/external-issues", external_issues_made),
        Route("/_stub/budget", budget, methods=["GET", "POST"]),
    ]


def create_app(state: StubState) -> Starlette:
    """The stub as an ASGI app over ``state`` (shared with the caller, who may mutate it)."""
    inst = "/api/0/sentry-app-installations/{uuid}"
    routes = [
        Route(
            "/api/0/organizations/{org}/issues/{issue_id}/events/latest/",
            _guard("latest_event", latest_event, state),
        ),
        Route(
            "/api/0/issues/{issue_id}/events/latest/", _guard("latest_event", latest_event, state)
        ),
        Route(
            "/api/0/organizations/{org}/issues/{issue_id}/tags/", _guard("tags", issue_tags, state)
        ),
        Route(
            "/api/0/organizations/{org}/issues/",
            _guard("issue_search", issues.issue_search, state),
        ),
        Route(
            "/api/0/organizations/{org}/issues/{issue_id}/",
            _guard("issue_detail", issues.issue_detail, state),
        ),
        Route(
            "/api/0/organizations/{org}/issues/{issue_id}/",
            _guard("issue_update", issue_update.issue_update, state),
            methods=["PUT"],
        ),
        Route("/api/0/organizations/{org}/releases/", _guard("releases", releases, state)),
        Route("/api/0/organizations/{org}/projects/", _guard("projects", org_projects, state)),
        Route(
            "/api/0/organizations/{org}/releases/{version}/", _guard("releases", releases, state)
        ),
        Route(
            "/api/0/organizations/{org}/releases/{version}/deploys/",
            _guard("deploys", release_deploys, state),
        ),
        Route(
            f"{inst}/authorizations/",
            _guard("authorizations", authorizations, state, auth=False),
            methods=["POST"],
        ),
        Route(f"{inst}/", _guard("installation", installation, state), methods=["PUT"]),
        Route(
            f"{inst}/external-issues/",
            _guard("external_issues", external_issues, state),
            methods=["POST"],
        ),
        Route(
            f"{inst}/external-issues/{{external_id}}/",
            _guard("external_issues", external_issues, state),
            methods=["DELETE"],
        ),
        Route("/sentry-apps/{slug}/external-install/", external_install),
        *_control_routes(state),
        *issues.control_routes(state),
        *issue_update.control_routes(state),
    ]
    app = Starlette(routes=routes)
    app.state.stub = state
    return app
