from blametrail_common.health import health_routes
from starlette.applications import Starlette
from starlette.testclient import TestClient


async def _yes() -> bool:
    return True


async def _boom() -> bool:
    raise RuntimeError("broker unreachable")


def test_readyz_names_failing_checks_and_metrics_are_exposed() -> None:
    app = Starlette(routes=health_routes({"kafka": _yes, "spool": _boom}))
    with TestClient(app) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"] == {"kafka": True, "spool": False}
        assert "python_info" in client.get("/metrics").text


def test_readyz_ok_when_all_checks_pass() -> None:
    app = Starlette(routes=health_routes({"kafka": _yes}))
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200


def test_metrics_scrape_evaluates_readiness() -> None:
    from blametrail_common.metrics import READY

    state = {"up": False}

    async def flips() -> bool:
        return state["up"]

    app = Starlette(routes=health_routes({"kafka": flips}))
    with TestClient(app) as client:
        assert "blametrail_ready 0.0" in client.get("/metrics").text
        state["up"] = True  # no /readyz call in between: the scrape itself looks
        assert "blametrail_ready 1.0" in client.get("/metrics").text
    assert READY._value.get() == 1.0


def test_a_degrading_check_is_reported_without_taking_the_service_out_of_rotation() -> None:
    from blametrail_common.health import Degrading
    from blametrail_common.metrics import READY

    app = Starlette(routes=health_routes({"postgres": _yes, "kafka": Degrading(_boom)}))
    with TestClient(app) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "degraded", "checks": {"postgres": True, "kafka": False}}
    assert READY._value.get() == 1.0
    app = Starlette(routes=health_routes({"postgres": _boom, "kafka": Degrading(_yes)}))
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 503
