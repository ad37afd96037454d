"""Pure: a labelled synthetic deploy and incident history, to evaluate suspect scoring. No IO.

Development only: suspects' tests and bench/suspects use it; the service does not ship it.

Deterministic for a seed. The world: services with their own file trees (a monorepo prefix on
some, Sentry frames relative, absolute or ``app:///`` on others), each deploying to production
on working days (with the same version on staging shortly before, mostly) and incidents whose
cause is one known deploy. What makes it hard is :class:`Noise`; the defaults are meant to look
like a busy team's week, not to make the scorer look good:

- busy services and follow-up deploys: ~6 production deploys a day per service, and 15% of
  deploys get a hotfix or unrelated follow-up 3-25 minutes later on the same service, so the
  follow-up is often the closest deploy and, when it lands before first-seen, the *running*
  release the event reports (release match then points at the wrong deploy);
- other services: 30% of incidents also map from a second service whose deploys are candidates;
- hot files: file popularity is Zipf-like, so middleware and models files change in many deploys
  and show up in many stack traces (frame overlap with unrelated deploys is common);
- missing data: 15% of deploys have no version recorded, 30% unknown changed paths, 5% no
  environment; 15% of incidents have no release, 20% no in-app frames (not enriched yet);
- latency: the error surfaces a lognormal time after the cause finished (median 8 min, a tail to
  hours), 15% while it is still rolling out; 20% of incidents are regressions and half of those
  were caused by a deploy hours to two days older (median 6 h) than first-seen;
- code evidence is imperfect: the crashing frame is in a changed file 65% of the time;
- suspect commits exist for 25% of incidents and are wrong a fifth of the time.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from blametrail_suspects.model import Deploy, IncidentFacts

__all__ = ["History", "LabelledIncident", "Noise", "generate", "pad_candidates"]

START = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday
_SERVICES = (
    "checkout-api",
    "cart",
    "payments",
    "search",
    "catalog",
    "accounts",
    "notifications",
    "web",
    "gateway",
    "inventory",
)
_DIRS = ("api", "models", "views", "tasks", "utils", "handlers", "clients", "db", "schemas")
_MODULES = ("core", "base", "service", "routes", "forms", "cache", "events", "client", "helpers")
_AUTHORS = tuple(f"dev{i}@example.com" for i in range(24))


@dataclass(frozen=True)
class Noise:
    """How messy the history is; the module docstring says what the defaults model."""

    deploys_per_day: float = 6.0
    staging_first: float = 0.8
    follow_up: float = 0.15
    mapped_service: float = 0.3
    missing_version: float = 0.15
    unknown_paths: float = 0.3
    missing_environment: float = 0.05
    incident_without_release: float = 0.15
    incident_without_frames: float = 0.2
    during_rollout: float = 0.15
    regressed: float = 0.2
    older_cause: float = 0.5
    crash_frame_changed: float = 0.65
    other_frame_changed: float = 0.15
    suspect_commits: float = 0.25
    suspect_commits_wrong: float = 0.2


@dataclass(frozen=True)
class LabelledIncident:
    facts: IncidentFacts
    cause_id: str
    label: str
    """How the incident was made: ``new``, ``regressed-live``, ``regressed-older``, ``other``."""


@dataclass(frozen=True)
class History:
    deploys: tuple[Deploy, ...]
    incidents: tuple[LabelledIncident, ...]


@dataclass
class _Service:
    name: str
    files: tuple[str, ...]
    popularity: tuple[float, ...]
    repo_prefix: str
    frame_style: str
    package_releases: bool


@dataclass
class _World:
    rng: random.Random
    noise: Noise
    services: dict[str, _Service]
    deploys: list[Deploy] = field(default_factory=list)
    true_paths: dict[str, tuple[str, ...]] = field(default_factory=dict)
    true_version: dict[str, str] = field(default_factory=dict)
    true_env: dict[str, str] = field(default_factory=dict)


def generate(seed: int, *, days: int = 14, incidents: int = 400, noise: Noise = Noise()) -> History:
    """A history of ``days`` days over ten services and ``incidents`` labelled incidents."""
    rng = random.Random(seed)
    world = _World(rng, noise, {name: _service(rng, name) for name in _SERVICES})
    for svc in world.services.values():
        _deploy_timeline(world, svc, days)
    world.deploys.sort(key=lambda d: d.start_ts)
    settled = (START + timedelta(days=3)).timestamp()  # causes have a full lookback of history
    prod = [d for d in world.deploys if d.start_ts > settled and world.true_env[d.id] != "staging"]
    staging = [d for d in world.deploys if d.start_ts > settled and d not in prod]
    made = tuple(
        _incident(world, rng.choice(prod if rng.random() < 0.85 else staging))
        for _ in range(incidents)
    )
    return History(deploys=tuple(world.deploys), incidents=made)


def _service(rng: random.Random, name: str) -> _Service:
    package = name.replace("-", "_")
    files = sorted(
        {
            f"app/{package}/{rng.choice(_DIRS)}/{rng.choice(_MODULES)}_{rng.randrange(8)}.py"
            for _ in range(250)
        }
    )
    rng.shuffle(files)
    return _Service(
        name=name,
        files=tuple(files),
        popularity=tuple(1 / (i + 1) ** 1.1 for i in range(len(files))),
        repo_prefix=rng.choice(("", f"services/{name}/")),
        frame_style=rng.choice(("relative", "absolute", "app")),
        package_releases=rng.random() < 0.5,
    )


def _pick_files(rng: random.Random, svc: _Service, k: int) -> tuple[str, ...]:
    picked: set[str] = set()
    while len(picked) < min(k, len(svc.files)):
        picked.add(rng.choices(svc.files, svc.popularity)[0])
    return tuple(sorted(picked))


def _deploy_timeline(world: _World, svc: _Service, days: int) -> None:
    rng, noise = world.rng, world.noise
    minor, staging_at = 0, START
    for day in range(days):
        if (START + timedelta(days=day)).weekday() >= 5:
            continue
        hours = sorted(9 + rng.random() * 9 for _ in range(_poisson(rng, noise.deploys_per_day)))
        for hour in hours:
            minor += 1
            at = START + timedelta(days=day, hours=hour)
            version = f"2.{minor}.0"
            if rng.random() < noise.staging_first:
                staged = max(staging_at, at - timedelta(minutes=rng.uniform(10, 120)))
                _add(world, svc, version, "staging", staged)
                staging_at = staged + timedelta(minutes=1)  # versions stay in order
            _add(world, svc, version, "production", at)
            if rng.random() < noise.follow_up:
                minor += 1
                follow = at + timedelta(minutes=rng.uniform(3, 25))
                _add(world, svc, f"2.{minor}.0", "production", follow)


def _add(world: _World, svc: _Service, version: str, env: str, started: datetime) -> None:
    rng, noise = world.rng, world.noise
    deploy_id = f"{svc.name}-{env[:4]}-{len(world.deploys)}"
    paths = _pick_files(rng, svc, 1 + int(rng.expovariate(1 / 4)))
    sha = f"{rng.getrandbits(160):040x}"
    recorded_env = None if rng.random() < noise.missing_environment else _env_spelling(rng, env)
    world.deploys.append(
        Deploy(
            id=deploy_id,
            service=svc.name,
            version=None if rng.random() < noise.missing_version else version,
            environment=recorded_env,
            commit_sha=sha,
            started_at=started,
            finished_at=started + timedelta(minutes=rng.uniform(2, 15)),
            author=rng.choice(_AUTHORS),
            url=f"https://ci.example.com/deploys/{deploy_id}",
            changed_paths=None
            if rng.random() < noise.unknown_paths
            else tuple(svc.repo_prefix + p for p in paths),
        )
    )
    world.true_paths[deploy_id] = paths
    world.true_version[deploy_id] = version
    world.true_env[deploy_id] = env


def _env_spelling(rng: random.Random, env: str) -> str:
    short = {"production": "prod", "staging": "stage"}[env]
    return env if rng.random() < 0.7 else short


def _poisson(rng: random.Random, mean: float) -> int:
    limit, k, p = math.exp(-mean), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _incident(world: _World, cause: Deploy) -> LabelledIncident:
    rng, noise = world.rng, world.noise
    svc = world.services[cause.service]
    kind, label, first_seen = _timing(world, cause)
    env = world.true_env[cause.id]
    running = _reporting_deploy(world, cause, first_seen)
    version = world.true_version[running.id]
    release = f"{svc.name}@{version}" if svc.package_releases else version
    services: tuple[str, ...] = (svc.name,)
    if rng.random() < noise.mapped_service:
        services += (rng.choice([s for s in world.services if s != svc.name]),)
    commits, authors = _suspect_committers(world, cause, first_seen)
    facts = IncidentFacts(
        services=services,
        first_seen=first_seen,
        release=None if rng.random() < noise.incident_without_release else release,
        environment=None if rng.random() < noise.missing_environment else env,
        substatus=kind if kind != "other" else rng.choice(("ongoing", "escalating")),
        in_app_files=_frames(world, svc, world.true_paths[cause.id]),
        suspect_commits=commits,
        suspect_authors=authors,
    )
    return LabelledIncident(facts=facts, cause_id=cause.id, label=label)


def _reporting_deploy(world: _World, cause: Deploy, first_seen: datetime) -> Deploy:
    """The deploy whose process sent the first event: one whose code has the bug (the cause or
    a later one), fully out by first-seen, or rolling out then (more likely the further along)."""
    env, at = world.true_env[cause.id], first_seen.timestamp()
    later = [
        d
        for d in world.deploys
        if d.service == cause.service
        and world.true_env[d.id] == env
        and cause.start_ts <= d.start_ts <= at
    ]
    done = [d for d in later if (d.finish_ts or at) <= at]
    base = max(done, key=lambda d: d.finish_ts or at) if done else cause
    rolling = [d for d in later if d.start_ts > base.start_ts and (d.finish_ts or at) > at]
    if not rolling:
        return base
    newest = max(rolling, key=lambda d: d.start_ts)
    progress = (at - newest.start_ts) / ((newest.finish_ts or at) - newest.start_ts)
    return newest if world.rng.random() < progress else base


def _timing(world: _World, cause: Deploy) -> tuple[str, str, datetime]:
    rng, noise = world.rng, world.noise
    started, finished = cause.started_at or START, cause.finished_at or START
    roll = rng.random()
    kind = "new" if roll < 0.95 - noise.regressed else "regressed" if roll < 0.95 else "other"
    if kind == "regressed" and rng.random() < noise.older_cause:
        hours = min(48.0, rng.lognormvariate(math.log(6), 0.8))
        return kind, "regressed-older", finished + timedelta(hours=max(1.0, hours))
    label = "regressed-live" if kind == "regressed" else kind
    if rng.random() < noise.during_rollout:
        return kind, label, started + (finished - started) * rng.uniform(0.3, 0.95)
    return kind, label, finished + timedelta(minutes=rng.lognormvariate(math.log(8), 1.2))


def _frames(world: _World, svc: _Service, changed: Sequence[str]) -> tuple[str, ...]:
    rng, noise = world.rng, world.noise
    if rng.random() < noise.incident_without_frames:
        return ()
    frames = []
    for i in range(rng.randint(3, 10)):
        p = noise.crash_frame_changed if i == 0 else noise.other_frame_changed
        path = rng.choice(changed) if rng.random() < p else _pick_files(rng, svc, 1)[0]
        frames.append(_frame_name(svc, path))
    return tuple(frames)


def _frame_name(svc: _Service, path: str) -> str:
    if svc.frame_style == "absolute":
        return f"/srv/{path}"
    return f"app:///{path}" if svc.frame_style == "app" else path


def _suspect_committers(
    world: _World, cause: Deploy, first_seen: datetime
) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    rng, noise = world.rng, world.noise
    if rng.random() >= noise.suspect_commits:
        return None, None
    blamed = cause
    if rng.random() < noise.suspect_commits_wrong:
        since = (first_seen - timedelta(days=3)).timestamp()
        others = [
            d
            for d in world.deploys
            if d.service == cause.service and since <= d.start_ts <= first_seen.timestamp()
        ]
        blamed = rng.choice(others)
    # Sentry blames the commit that last touched the frame's line: the deploy's head commit
    # about half the time, otherwise an earlier commit of the same range by the same author.
    head = rng.random() < 0.5
    sha = blamed.commit_sha if head and blamed.commit_sha else f"{rng.getrandbits(160):040x}"
    return (sha,), (blamed.author,) if blamed.author else None


def pad_candidates(
    history: History, incident: LabelledIncident, n: int, *, lookback: timedelta, seed: int = 0
) -> list[Deploy]:
    """The incident's real candidates plus copies of its services' deploys at random times in
    the lookback window, ``n`` in all: a crowded history for throughput measurements."""
    rng = random.Random(seed)
    facts = incident.facts
    since = facts.first_seen - lookback
    pool = [d for d in history.deploys if d.service in facts.services]
    real = [
        d
        for d in pool
        if since <= (d.finished_at or START) and d.start_ts <= facts.first_seen.timestamp()
    ]
    padded = list(real)
    while len(padded) < n:
        at = since + (facts.first_seen - since) * rng.random()
        twin = rng.choice(pool)
        padded.append(
            replace(
                twin,
                id=f"{twin.id}-pad{len(padded)}",
                started_at=at - timedelta(minutes=5),
                finished_at=at,
            )
        )
    return padded
