import uuid

import psycopg
import pytest
from blametrail_common.db import Migration, MigrationError, load_migrations, migrate
from blametrail_devstack.pytest_plugin import Infra, create_database


@pytest.fixture
def empty_db(infra: Infra, database_url: str) -> str:
    return create_database(infra.server_dsn, f"bt_mig_{uuid.uuid4().hex[:8]}")


def test_shipped_migrations_are_ordered_and_named() -> None:
    found = load_migrations()
    assert [m.version for m in found] == sorted({m.version for m in found})
    assert found[0].version == 1


def test_apply_on_empty_database_then_rerun_is_a_no_op(empty_db: str) -> None:
    applied = migrate(empty_db)
    assert [m.version for m in applied] == [m.version for m in load_migrations()]
    assert migrate(empty_db) == []
    with psycopg.connect(empty_db) as conn:
        rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
        assert [r[0] for r in rows] == [m.version for m in applied]
        conn.execute("SELECT group_id FROM consumer_offsets").fetchall()


def test_the_projections_large_json_is_compressed_with_lz4(empty_db: str) -> None:
    migrate(empty_db)
    with psycopg.connect(empty_db) as conn:
        methods = conn.execute(
            "SELECT attrelid::regclass::text || '.' || attname, attcompression FROM pg_attribute"
            " WHERE attrelid::regclass::text IN"
            " ('incident_enrichments', 'incident_suspects', 'incident_timeline', 'webhook_audit')"
            " AND atttypid = 'jsonb'::regtype"
        ).fetchall()
    assert dict(methods) == {
        "incident_enrichments.record": "l",
        "incident_suspects.suspects": "l",
        "incident_timeline.payload": "l",
        "webhook_audit.detail": "l",
    }
    with psycopg.connect(empty_db) as conn:  # 0038: the database's default, for staging tables
        settings = conn.execute(
            "SELECT setconfig FROM pg_db_role_setting WHERE setrole = 0"
            " AND setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchone()
        assert settings is not None
        assert "default_toast_compression=lz4" in settings[0]


def test_what_a_migration_tells_is_logged_as_a_warning(
    empty_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    told = Migration(1, "told", "DO $$ BEGIN RAISE NOTICE 'pglz kept: %', 'why'; END $$;")
    with caplog.at_level("WARNING", logger="blametrail_common.db"):
        assert migrate(empty_db, [told]) == [told]
    [record] = [r for r in caplog.records if r.name == "blametrail_common.db"]
    assert record.__dict__["migration"] == "0001_told"
    assert record.__dict__["notice"] == "pglz kept: why"


def test_a_changed_applied_migration_is_refused(empty_db: str) -> None:
    m = Migration(1, "x", "CREATE TABLE t_x (id int);")
    assert migrate(empty_db, [m]) == [m]
    with pytest.raises(MigrationError, match="changed after it was applied"):
        migrate(empty_db, [Migration(1, "x", "CREATE TABLE t_x (id bigint);")])


def test_a_failing_migration_leaves_nothing_half_applied(empty_db: str) -> None:
    bad = Migration(1, "bad", "CREATE TABLE t_ok (id int); SELECT * FROM no_such_table;")
    with pytest.raises(psycopg.errors.UndefinedTable):
        migrate(empty_db, [bad])
    with psycopg.connect(empty_db) as conn:
        assert conn.execute("SELECT to_regclass('t_ok')").fetchone() == (None,)
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone() == (0,)
