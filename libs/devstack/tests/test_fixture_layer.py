import os
from pathlib import Path

from blametrail_devstack.pytest_plugin import Infra, choose_origin, open_infra


def _java_brokers() -> set[int]:
    pids = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"kafka.Kafka" in cmd:
                pids.add(int(proc.name))
    return pids


def test_origin_order() -> None:
    both = {"KAFKA_BOOTSTRAP_SERVERS": "h:1", "DATABASE_URL": "postgresql://x"}
    assert choose_origin(both, lambda: True) == "env"
    assert choose_origin({"KAFKA_BOOTSTRAP_SERVERS": "h:1"}, lambda: True) == "testcontainers"
    assert choose_origin({}, lambda: False) == "local"


def test_env_vars_are_used_and_no_second_broker_starts(infra: Infra) -> None:
    before = _java_brokers()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": infra.bootstrap,
        "DATABASE_URL": infra.server_dsn,
    }

    def docker_must_not_be_asked() -> bool:
        raise AssertionError("env vars were set; docker should not be probed")

    with open_infra(env, docker_must_not_be_asked) as found:
        assert found.origin == "env"
        assert found.started == []
        assert (found.bootstrap, found.server_dsn) == (infra.bootstrap, infra.server_dsn)
        assert _java_brokers() == before


def test_the_edge_sends_webhooks_to_ingest_and_the_rest_to_the_api() -> None:
    from blametrail_devstack.edge import upstream_for

    assert upstream_for("/webhooks/sentry/abc", "I", "A") == "I"
    assert upstream_for("/webhooks/sentry", "I", "A") == "I"
    for path in ("/sentry/issue-link/create", "/integrations/sentry/oauth/callback", "/api/v1/x"):
        assert upstream_for(path, "I", "A") == "A"
        assert upstream_for(path, "I", "A", "W") == "A"
    for path in ("/", "/incidents", "/org/integrations/sentry/mappings", "/signin"):
        assert upstream_for(path, "I", "A", "W") == "W"
    assert upstream_for("/webhooks/sentry/abc", "I", "A", "W") == "I"
