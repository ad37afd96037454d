"""Pure: which incidents to score again when an event arrives, and the ``incident.suspects`` event.

:class:`SuspectState` holds the deploys (every one: the compacted ``deploys`` topic is small)
and the recent incidents (a bounded LRU), each as the facts scoring reads of its latest lifecycle
event and enrichment (:mod:`blametrail_suspects.facts`) and that event's JSON: about 2 KB an
incident, where the whole models were about 25 KB with a typical enrichment. Each ``on_*``
method takes one decoded event and returns the suspects events to publish: an incident is scored
when it opens or changes, when its enrichment arrives (release, environment and frames sharpen
the signals), and when a deploy of one of its services arrives late, within the lookback before
its first-seen. An incident whose ranking did not change gets no new event.

Output is deterministic: ``computed_at`` is the newest input's own time (never the clock) and
the event id derives from the incident and that ranking, so a replay gives the same events.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from blametrail_common.events import Envelope, new_event
from blametrail_common.events.deploys import (
    DeployRecordedV1,
    IncidentSuspectsV1,
    SuspectSignal,
    SuspectV1,
    deploy_id_for,
)
from blametrail_common.events.enrichment import IncidentEnrichedV1
from blametrail_common.events.incidents import IncidentEvent, incident_order

from blametrail_suspects.facts import (
    EnrichmentFacts,
    EventFacts,
    enrichment_facts,
    event_facts,
    incident_facts,
)
from blametrail_suspects.model import Deploy, Suspect
from blametrail_suspects.scoring import DEFAULT_CLOCK_SKEW, DEFAULT_LOOKBACK, score

__all__ = ["TOP", "SuspectState", "deploy_of"]

TOP = 5  # suspects kept per incident
SKEW = DEFAULT_CLOCK_SKEW.total_seconds()
_NS = uuid.UUID("0b5c7a52-3f0e-4d55-9a8e-5d1c2f6b9e11")


def deploy_of(p: DeployRecordedV1) -> Deploy:
    return Deploy(
        id=p.deploy_id,
        service=p.service_id,
        version=p.version,
        environment=p.environment,
        commit_sha=p.commit_sha,
        started_at=p.started_at,
        finished_at=p.finished_at,
        author=p.author,
        url=p.url,
        changed_paths=None if p.changed_paths is None else tuple(p.changed_paths),
    )


@dataclass(slots=True)
class _Incident:
    """A recent incident: its latest event's facts, ``incident_order`` and JSON, its latest
    enrichment's facts, and the digest of the last ranking published for it."""

    latest: EventFacts
    order: str
    kind: type[IncidentEvent]
    dumped: bytes
    enrichment: EnrichmentFacts | None = None
    last: bytes | None = None

    @classmethod
    def of(cls, p: IncidentEvent) -> _Incident:
        dumped = p.__pydantic_serializer__.to_json(p)  # model_dump_json()'s bytes
        return cls(event_facts(p), incident_order(p, dumped), type(p), dumped)

    @property
    def event(self) -> IncidentEvent:
        """The latest event, decoded again from its JSON (scoring never reads it)."""
        return self.kind.model_validate_json(self.dumped)


class SuspectState:
    def __init__(
        self, max_incidents: int = 100_000, lookback: timedelta = DEFAULT_LOOKBACK
    ) -> None:
        self.deploys: dict[str, tuple[Deploy, DeployRecordedV1]] = {}
        # The same deploys by service: an incident's candidates are its services' deploys, so
        # scoring one never walks the others' (the history only grows).
        self._by_service: dict[str, dict[str, Deploy]] = {}
        self.incidents: OrderedDict[str, _Incident] = OrderedDict()
        self.max_incidents, self.lookback = max_incidents, lookback
        # The service the incident's Sentry project is mapped to, when an alert-rule action
        # routed the incident elsewhere: its deploys are candidates too.
        self.mapped_service: Callable[[str, str], str | None] = lambda _conn, _slug: None
        self._deferred: set[str] | None = None  # incidents to score once ``restoring`` ends

    @contextlib.contextmanager
    def restoring(self) -> Iterator[None]:
        """A warm-up: the ``on_*`` calls inside take their events into the state and score
        nothing (they return no suspects; a release import still comes back, the worker drops
        it: published before the restart); at the end each incident they touched is scored
        once, for its last ranking (``last``: an unchanged one gets no new event later). Scoring
        every event as it was read back cost 38 s of CPU at a restart after a storm; the last
        ranking is the same, as every deploy is loaded before."""
        self._deferred = set()
        try:
            yield
            touched = self._deferred
        finally:
            self._deferred = None
        for incident_id in touched:
            known = self.incidents.get(incident_id)
            if known is not None:  # not evicted since
                self._score(incident_id, known)

    def remember(self, p: DeployRecordedV1) -> Deploy:
        deploy = deploy_of(p)
        before = self.deploys.get(p.deploy_id)
        if before is not None and before[0].service != deploy.service:
            del self._by_service[before[0].service][p.deploy_id]
        self.deploys[p.deploy_id] = (deploy, p)
        self._by_service.setdefault(deploy.service, {})[p.deploy_id] = deploy
        return deploy

    def _deploys_of(self, services: tuple[str, ...]) -> list[Deploy]:
        """The deploys of ``services`` (distinct names: the incident's and its mapped one)."""
        return [d for name in services for d in self._by_service.get(name, {}).values()]

    def on_deploy(self, p: DeployRecordedV1) -> list[Envelope[IncidentSuspectsV1]]:
        """Remember the deploy; score again the incidents it may have caused."""
        deploy = self.remember(p)
        out = []
        for incident_id, known in list(self.incidents.items()):
            gap = known.latest.first_seen.timestamp() - deploy.start_ts
            if -SKEW <= gap <= self.lookback.total_seconds() and (
                deploy.service in self._services(known.latest)
            ):
                out += self._score(incident_id, known)
        return out

    def on_incident(self, p: IncidentEvent) -> list[Envelope[IncidentSuspectsV1]]:
        fresh = _Incident.of(p)
        known = self.incidents.get(p.incident_id)
        if known is None:
            known = self.incidents[p.incident_id] = fresh
            while len(self.incidents) > self.max_incidents:
                self.incidents.popitem(last=False)
        elif fresh.order > known.order:  # the later state, ties broken
            fresh.enrichment, fresh.last = known.enrichment, known.last
            known = self.incidents[p.incident_id] = fresh
        self.incidents.move_to_end(p.incident_id)
        return self._score(p.incident_id, known)

    def on_enrichment(self, p: IncidentEnrichedV1) -> list[Envelope[Any]]:
        """Score with the event's facts. A release no deploy of the service is known for, but whose
        last deploy Sentry reports, is imported first: a ``deploy.recorded`` (source ``sentry``)
        is returned before the suspects, for the ``deploys`` topic."""
        known = self.incidents.get(p.incident_id)
        if known is None:  # enrichment of an incident this process never saw (e.g. restarted)
            return []
        if known.enrichment is None or p.fetched_at >= known.enrichment.fetched_at:
            known.enrichment = enrichment_facts(p)
        out: list[Envelope[Any]] = []
        imported = self._release_deploy(known.latest, p)
        if imported is not None:
            self.remember(imported)
            out.append(
                new_event(
                    imported,
                    key=imported.deploy_id,
                    tenant=imported.tenant_id,
                    occurred_at=imported.recorded_at,
                    event_id=uuid.uuid5(_NS, f"{imported.deploy_id}:sentry"),
                    produced_at=imported.recorded_at,
                )
            )
        return out + self._score(p.incident_id, known)

    def _release_deploy(
        self, incident: EventFacts, enrichment: IncidentEnrichedV1
    ) -> DeployRecordedV1 | None:
        release = enrichment.release
        if release is None or any(
            d.version == release.version for d in self._deploys_of((incident.service_id,))
        ):
            return None
        started = _when(release.last_deploy_started)
        finished = _when(release.last_deploy_finished)
        start = started or finished
        if start is None:
            return None
        env = release.last_deploy_environment
        return DeployRecordedV1(
            deploy_id=deploy_id_for(
                incident.tenant_id, incident.service_id, env, release.version, start
            ),
            tenant_id=incident.tenant_id,
            service_id=incident.service_id,
            version=release.version,
            environment=env,
            commit_sha=release.commit,
            started_at=started,
            finished_at=finished,
            source="sentry",
            recorded_at=enrichment.fetched_at,
        )

    def _services(self, event: EventFacts) -> tuple[str, ...]:
        """The incident's service, and the one its Sentry project is mapped to if different."""
        slug = event.project_slug
        mapped = self.mapped_service(event.connection_id, slug) if slug else None
        return (
            (event.service_id,)
            if mapped in (None, event.service_id)
            else (event.service_id, mapped)
        )

    def _candidates(self, deploys: list[Deploy], first_seen: float) -> int:
        """How many of the incident's services' ``deploys`` the scoring considered (it ranks
        them all, keeps the best ``TOP``)."""
        low, high = first_seen - self.lookback.total_seconds(), first_seen + SKEW
        return sum(1 for d in deploys if low <= (d.finish_ts or d.start_ts) and d.start_ts <= high)

    def _score(self, incident_id: str, known: _Incident) -> list[Envelope[IncidentSuspectsV1]]:
        if self._deferred is not None:
            self._deferred.add(incident_id)
            return []
        event = known.latest
        facts = incident_facts(event, known.enrichment, mapped_from=self._services(event))
        # Ranking does not depend on the order of the deploys (ties go by id).
        pool = self._deploys_of(facts.services)
        ranked = score(facts, pool, lookback=self.lookback, limit=TOP)
        times = [event.status_at]
        if known.enrichment is not None:
            times.append(known.enrichment.fetched_at)
        times += [self.deploys[s.deploy.id][1].recorded_at for s in ranked]
        suspects = [_suspect(s) for s in ranked]
        digest = hashlib.sha256("|".join(s.model_dump_json() for s in suspects).encode())
        if digest.digest() == known.last:
            return []
        known.last, fingerprint = digest.digest(), digest.hexdigest()
        payload = IncidentSuspectsV1(
            incident_id=incident_id,
            tenant_id=event.tenant_id,
            computed_at=max(times),
            candidates=self._candidates(pool, facts.first_seen.timestamp()),
            suspects=suspects,
        )
        return [
            new_event(
                payload,
                key=incident_id,
                tenant=event.tenant_id,
                occurred_at=payload.computed_at,
                event_id=uuid.uuid5(_NS, f"{incident_id}:{fingerprint}"),
                produced_at=payload.computed_at,
            )
        ]


def _when(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _suspect(s: Suspect) -> SuspectV1:
    d = s.deploy
    return SuspectV1(
        deploy_id=d.id,
        service_id=d.service,
        version=d.version,
        environment=d.environment,
        finished_at=d.finished_at,
        url=d.url,
        score=round(s.score, 4),
        explain=s.explain,
        signals=[
            SuspectSignal(
                name=g.name,
                value=round(g.value, 4),
                weight=round(g.weight, 4),
                contribution=round(g.contribution, 4),
                imputed=g.imputed,
                detail=g.detail,
            )
            for g in s.signals
        ],
    )
