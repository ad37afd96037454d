"""The ingest app as an importable ASGI object (``uvicorn ingest_app:app`` from this folder), for
the benchmark: built from the environment exactly like ``__main__``, without the connections table."""

from __future__ import annotations

from blametrail_common.settings import KafkaSettings
from blametrail_devstack.ingest_testing import NoConnections
from blametrail_ingest.app import create_app
from blametrail_ingest.publisher import WebhookPublisher
from blametrail_ingest.settings import IngestSettings
from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send


class _LazyApp:
    """Builds the app inside uvicorn's loop (aiokafka objects must be created in a running loop)."""

    def __init__(self) -> None:
        self._app: Starlette | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._app is None:
            settings, kafka = IngestSettings(), KafkaSettings()
            publisher = WebhookPublisher.build(settings, kafka)
            self._app = create_app(settings, publisher, NoConnections())
        await self._app(scope, receive, send)


app = _LazyApp()
