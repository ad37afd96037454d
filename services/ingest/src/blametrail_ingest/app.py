"""The webhook routes. Checks run in the order of the contract, cheapest first:
method, connection, size, content type, signature present, body (size/deadline), signature
valid, JSON, resource header, publish. Nothing is published unless every check passed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from blametrail_common import signature
from blametrail_common.events import Envelope, WebhookReceivedV1, body_sha256, encode, new_event
from blametrail_common.health import health_routes
from prometheus_client import Counter
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from blametrail_ingest import payload
from blametrail_ingest.connections import SecretsLookup
from blametrail_ingest.publisher import Unavailable, WebhookPublisher
from blametrail_ingest.settings import IngestSettings

__all__ = ["create_app"]

RECEIVED = Counter("blametrail_ingest_received_total", "Webhooks received")
VERIFIED = Counter("blametrail_ingest_verified_total", "Webhooks whose signature verified")
REJECTED = Counter("blametrail_ingest_rejected_total", "Webhooks rejected", ["reason"])
SIGNATURE_HEADERS = ("sentry-hook-signature", "sentry-app-signature")


class Rejected(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


class _Disconnected(Exception):
    pass


def create_app(
    settings: IngestSettings, publisher: WebhookPublisher, connections: SecretsLookup
) -> Starlette:
    """The ingest ASGI app; its lifespan starts and stops ``publisher``."""

    async def public(request: Request) -> Response:
        return await _receive(request, None, settings.public_secrets())

    async def internal(request: Request) -> Response:
        connection_id = request.path_params["connection_id"]
        return await _receive(request, connection_id, connections.secrets_for(connection_id))

    async def _receive(
        request: Request, connection_id: str | None, secrets: list[str] | None
    ) -> Response:
        RECEIVED.inc()
        try:
            if not secrets:
                raise Rejected(404, "unknown_connection", "unknown or disabled connection")
            event, key = await _accept(request, connection_id, secrets, settings)
            path = await publisher.publish(key.encode(), encode(event))
        except Rejected as r:
            REJECTED.labels(r.reason).inc()
            return JSONResponse({"error": r.reason, "message": r.message}, status_code=r.status)
        except _Disconnected:
            REJECTED.labels("client_disconnected").inc()
            return Response(status_code=400)
        except Unavailable:
            REJECTED.labels("unavailable").inc()
            return JSONResponse(
                {"error": "unavailable", "message": "cannot store webhooks now"}, 503
            )
        return JSONResponse({"status": "accepted", "id": str(event.id), "queued": path == "spool"})

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        REJECTED.labels(f"http_{exc.status_code}").inc()
        return JSONResponse(
            {"error": "http", "message": exc.detail}, exc.status_code, headers=exc.headers
        )

    async def ready() -> bool:
        return (publisher.connected or publisher.spool.writable()) and connections.ready()

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await publisher.start()
        try:
            yield
        finally:
            await publisher.drained(timeout_s=5.0)
            await publisher.stop()

    routes = [
        Route("/webhooks/sentry", public, methods=["POST"]),
        Route("/webhooks/sentry/{connection_id}", internal, methods=["POST"]),
        *health_routes({"publish_path": ready}),
    ]
    return Starlette(
        routes=routes, exception_handlers={HTTPException: http_error}, lifespan=lifespan
    )


async def _accept(
    request: Request, connection_id: str | None, secrets: list[str], settings: IngestSettings
) -> tuple[Envelope[WebhookReceivedV1], str]:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > settings.max_body_bytes):
        raise Rejected(413, "too_large", f"body over {settings.max_body_bytes} bytes")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise Rejected(415, "content_type", "content type must be application/json")
    sig_values = [(h, v) for h in SIGNATURE_HEADERS for v in request.headers.getlist(h)]
    if not sig_values:
        raise Rejected(401, "signature_missing", "Sentry-Hook-Signature header missing")
    if len(sig_values) > 1:
        raise Rejected(400, "signature_ambiguous", "more than one signature header")
    header_name, sig = sig_values[0]
    body = await _read_body(request, settings)
    if not signature.verify(body, sig, secrets):
        reason = "signature_malformed" if not signature.is_well_formed(sig) else "signature_invalid"
        raise Rejected(401, reason, "signature does not match the body")
    VERIFIED.inc()
    try:
        doc = payload.parse(body)
    except payload.BadPayload as exc:
        raise Rejected(400, "bad_json", str(exc)) from None
    resource = request.headers.get("sentry-hook-resource")
    if not resource:
        raise Rejected(400, "resource_missing", "Sentry-Hook-Resource header missing")
    action, installation, supported = payload.summarize(resource, doc)
    digest = body_sha256(body)
    raw = WebhookReceivedV1(
        connection_id=connection_id,
        resource=resource,
        action=action,
        installation_uuid=installation,
        signature_header="Sentry-Hook-Signature"
        if header_name == "sentry-hook-signature"
        else "Sentry-App-Signature",
        request_id=request.headers.get("request-id"),
        hook_timestamp=request.headers.get("sentry-hook-timestamp"),
        received_at=datetime.now(UTC),
        body_sha256=digest,
        body=body.decode("utf-8"),
        supported=supported,
    )
    key = payload.kafka_key(resource, doc, digest)
    return new_event(raw, key=key), key


async def _read_body(request: Request, settings: IngestSettings) -> bytes:
    chunks, size = [], 0
    try:
        async with asyncio.timeout(settings.body_timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > settings.max_body_bytes:
                    raise Rejected(413, "too_large", f"body over {settings.max_body_bytes} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise Rejected(
            408, "body_timeout", f"body not received within {settings.body_timeout_s}s"
        ) from None
    except ClientDisconnect:
        raise _Disconnected from None
    return b"".join(chunks)
