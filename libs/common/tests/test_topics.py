import pytest
from blametrail_common.topics import TOPICS, get_topic, topic_name


def test_names_are_unique_and_kebab_case() -> None:
    names = [t.name for t in TOPICS]
    assert len(names) == len(set(names))
    assert all(n == n.lower() and " " not in n and "_" not in n for n in names)


def test_control_plane_tables_are_compacted() -> None:
    for name in ("cp-mappings", "cp-connections", "cp-services"):
        spec = get_topic(name)
        assert spec.cleanup_policy == "compact"
        assert spec.config()["cleanup.policy"] == "compact"
        assert "retention.ms" not in spec.config()


def test_every_consumed_stream_has_a_dead_letter_twin() -> None:
    names = {t.name for t in TOPICS}
    for stream in (
        "sentry-webhooks-raw",
        "incident-events",
        "incident-enrichments",
        "webhook-audit",
    ):
        assert f"{stream}-dlq" in names


def test_prefix_applies_and_unknown_topics_are_named() -> None:
    assert topic_name("incident-events", "t1.") == "t1.incident-events"
    with pytest.raises(KeyError, match="'nope' is not in the registry"):
        topic_name("nope")
