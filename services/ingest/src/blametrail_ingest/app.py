"""The webhook routes. Checks run in the order of the contract, cheapest first:
method, connection, size, content type, signature present, body (size/deadline), signature
valid, JSON, resource header, publish. Nothing is published unless every check passed.

The two webhook routes are plain ASGI endpoints inside the Starlette app (routing, the 405 for
other methods and the error middleware are Starlette's): one pass over the raw headers, the body
straight from ``receive``, the answer as two ASGI messages. This is the hot path, and a
``Request``/``JSONResponse`` pair costs more than the signature check and the JSON parse together.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Literal

import orjson
from blametrail_common import signature
from blametrail_common.events import Envelope, WebhookReceivedV1, body_sha256, encode, new_event
from blametrail_common.health import health_routes
from prometheus_client import Counter
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from blametrail_ingest import payload
from blametrail_ingest.connections import SecretsLookup
from blametrail_ingest.publisher import TooLarge, Unavailable, WebhookPublisher
from blametrail_ingest.settings import IngestSettings

__all__ = ["create_app"]

RECEIVED = Counter("blametrail_ingest_received_total", "Webhooks received")
VERIFIED = Counter("blametrail_ingest_verified_total", "Webhooks whose signature verified")
REJECTED = Counter("blametrail_ingest_rejected_total", "Webhooks rejected", ["reason"])
SignatureHeader = Literal["Sentry-Hook-Signature", "Sentry-App-Signature"]
_SIGNATURE_HEADERS: dict[bytes, SignatureHeader] = {
    b"sentry-hook-signature": "Sentry-Hook-Signature",
    b"sentry-app-signature": "Sentry-App-Signature",
}
_JSON_HEADERS = [(b"content-type", b"application/json")]
_RETRY_AFTER = ((b"retry-after", b"1"),)


class Rejected(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


class _Disconnected(Exception):
    pass


class NotReady(Exception):
    """The connections table has not caught up yet: whether the connection exists, or which
    secrets it has now, is not known, so the answer is 503 with ``Retry-After``, never a 4xx."""


class _Headers:
    """The headers the checks need, from one pass over the raw list (names arrive lowercased).
    A repeated header keeps its first value, as Starlette's ``headers.get`` would; signature
    headers are all kept, because two of them must be refused rather than picked from."""

    __slots__ = (
        "content_length",
        "content_type",
        "request_id",
        "resource",
        "signatures",
        "timestamp",
    )

    content_length: str | None
    content_type: str | None
    resource: str | None
    request_id: str | None
    timestamp: str | None
    signatures: list[tuple[SignatureHeader, str]]

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.content_length = self.content_type = self.resource = None
        self.request_id = self.timestamp = None
        self.signatures = []
        for name, value in raw:
            if name in _SIGNATURE_HEADERS:
                self.signatures.append((_SIGNATURE_HEADERS[name], value.decode("latin-1")))
            elif name == b"content-length" and self.content_length is None:
                self.content_length = value.decode("latin-1")
            elif name == b"content-type" and self.content_type is None:
                self.content_type = value.decode("latin-1")
            elif name == b"sentry-hook-resource" and self.resource is None:
                self.resource = value.decode("latin-1")
            elif name == b"request-id" and self.request_id is None:
                self.request_id = value.decode("latin-1")
            elif name == b"sentry-hook-timestamp" and self.timestamp is None:
                self.timestamp = value.decode("latin-1")


class WebhookEndpoint:
    """ASGI endpoint of one webhook URL; ``secrets`` names the secrets valid for a request."""

    def __init__(
        self,
        settings: IngestSettings,
        publisher: WebhookPublisher,
        secrets: Callable[[Scope], tuple[str | None, list[str] | None]],
    ) -> None:
        self.settings, self.publisher, self.secrets = settings, publisher, secrets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        RECEIVED.inc()
        try:
            connection_id, secrets = self.secrets(scope)
            if not secrets:
                raise Rejected(404, "unknown_connection", "unknown or disabled connection")
            event, key = await self._accept(scope, receive, connection_id, secrets)
            landed = await self.publisher.publish(key.encode(), encode(event))
        except Rejected as r:
            REJECTED.labels(r.reason).inc()
            await _answer(send, r.status, {"error": r.reason, "message": r.message})
            return
        except NotReady:
            REJECTED.labels("not_ready").inc()
            await _answer(
                send,
                503,
                {"error": "not_ready", "message": "connections not loaded yet, retry"},
                _RETRY_AFTER,
            )
            return
        except _Disconnected:
            REJECTED.labels("client_disconnected").inc()
            await _answer(send, 400, {"error": "client_disconnected", "message": "body cut off"})
            return
        except TooLarge as exc:
            REJECTED.labels("too_large").inc()
            await _answer(send, 413, {"error": "too_large", "message": str(exc)})
            return
        except Unavailable:
            REJECTED.labels("unavailable").inc()
            await _answer(
                send, 503, {"error": "unavailable", "message": "cannot store webhooks now"}
            )
            return
        await _answer(
            send, 200, {"status": "accepted", "id": str(event.id), "queued": landed == "spool"}
        )

    async def _accept(
        self, scope: Scope, receive: Receive, connection_id: str | None, secrets: list[str]
    ) -> tuple[Envelope[WebhookReceivedV1], str]:
        limit = self.settings.max_body_bytes
        headers = _Headers(scope["headers"])
        declared = headers.content_length
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise Rejected(413, "too_large", f"body over {limit} bytes")
        ctype = (headers.content_type or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise Rejected(415, "content_type", "content type must be application/json")
        if not headers.signatures:
            raise Rejected(401, "signature_missing", "Sentry-Hook-Signature header missing")
        if len(headers.signatures) > 1:
            raise Rejected(400, "signature_ambiguous", "more than one signature header")
        header_name, sig = headers.signatures[0]
        body = await self._read_body(receive)
        if not signature.verify(body, sig, secrets):
            reason = (
                "signature_malformed" if not signature.is_well_formed(sig) else "signature_invalid"
            )
            raise Rejected(401, reason, "signature does not match the body")
        VERIFIED.inc()
        try:
            doc = payload.parse(body)
        except payload.BadPayload as exc:
            raise Rejected(400, "bad_json", str(exc)) from None
        resource = headers.resource
        if not resource:
            raise Rejected(400, "resource_missing", "Sentry-Hook-Resource header missing")
        action, installation, supported = payload.summarize(resource, doc)
        digest = body_sha256(body)
        raw = WebhookReceivedV1(
            connection_id=connection_id,
            resource=resource,
            action=action,
            installation_uuid=installation,
            signature_header=header_name,
            request_id=headers.request_id,
            hook_timestamp=headers.timestamp,
            received_at=datetime.now(UTC),
            body_sha256=digest,
            body=body.decode("utf-8"),
            supported=supported,
        )
        key = payload.kafka_key(resource, doc, digest)
        return new_event(raw, key=key), key

    async def _read_body(self, receive: Receive) -> bytes:
        """The whole body, never more than the limit, within the deadline."""
        limit, chunks, size = self.settings.max_body_bytes, [], 0
        try:
            async with asyncio.timeout(self.settings.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise _Disconnected
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        raise Rejected(413, "too_large", f"body over {limit} bytes")
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            raise Rejected(
                408, "body_timeout", f"body not received within {self.settings.body_timeout_s}s"
            ) from None
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _answer(
    send: Send, status: int, doc: dict[str, object], extra: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    body = orjson.dumps(doc)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*_JSON_HEADERS, *extra, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def create_app(
    settings: IngestSettings, publisher: WebhookPublisher, connections: SecretsLookup
) -> Starlette:
    """The ingest ASGI app; its lifespan starts and stops ``publisher``."""
    public_secrets = settings.public_secrets()

    def public(_: Scope) -> tuple[str | None, list[str] | None]:
        return None, public_secrets

    def internal(scope: Scope) -> tuple[str | None, list[str] | None]:
        connection_id: str = scope["path_params"]["connection_id"]
        if not connections.ready():
            raise NotReady
        return connection_id, connections.secrets_for(connection_id)

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        REJECTED.labels(f"http_{exc.status_code}").inc()
        return JSONResponse(
            {"error": "http", "message": exc.detail}, exc.status_code, headers=exc.headers
        )

    async def publish_path() -> bool:
        return publisher.connected or publisher.spool.writable()

    async def connections_loaded() -> bool:
        return connections.ready()

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await publisher.start()
        try:
            yield
        finally:
            await publisher.drained(timeout_s=5.0)
            await publisher.stop()

    routes = [
        Route("/webhooks/sentry", WebhookEndpoint(settings, publisher, public), methods=["POST"]),
        Route(
            "/webhooks/sentry/{connection_id}",
            WebhookEndpoint(settings, publisher, internal),
            methods=["POST"],
        ),
        *health_routes({"publish_path": publish_path, "connections": connections_loaded}),
    ]
    return Starlette(
        routes=routes, exception_handlers={HTTPException: http_error}, lifespan=lifespan
    )
