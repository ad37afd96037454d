"""The product in a real browser: Playwright driving Debian's Chromium against the whole stack
(Kafka, Postgres, ingest, normalizer, enricher, projector, suspects, API, web and the Sentry
stand-in, each a process, on ports of their own), step by step as the product docs walk it
(/work/shared/product/project-mappings.md). Screenshots of each page go to
``.local/screenshots/<page>.png`` (1280 px; the main pages also at 390 px)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from blametrail_devstack.install import ensure_chromium
from blametrail_devstack.paths import local_dir
from blametrail_devstack.pytest_plugin import Infra
from blametrail_devstack.webstack import STUB_TOKEN, WebStack, running_web_stack
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

SECRET = "browser-client-secret"
SHOTS = local_dir() / "screenshots"
SLOW = 90_000  # ms: the whole pipeline on a loaded 2-core machine
# The docs' example configuration: project, service, active.
DOCS_TABLE = (
    ("frontend", "Web App", True),
    ("payments-api", "Payments API", True),
    ("email-worker", "Email Worker", True),
    ("internal-tools", "Internal Tools", False),
)


@pytest.fixture(scope="module")
def stack(infra: Infra) -> Iterator[WebStack]:
    with running_web_stack(infra.server_dsn) as st:
        yield st


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=ensure_chromium())
        yield b
        b.close()


def shot(page: Page, name: str, narrow: bool = False) -> None:
    """Full-page screenshots at 1280 px (and 390 px for the main pages)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    if narrow:
        page.set_viewport_size({"width": 390, "height": 844})
        page.screenshot(path=str(SHOTS / f"{name}-390.png"), full_page=True)
        page.set_viewport_size({"width": 1280, "height": 900})


def row(page: Page, project: str) -> Locator:
    return page.locator(f'#mappings tr[data-project="{project}"]')


def incident_rows(page: Page) -> Locator:
    return page.locator("#incident-rows tr[data-id]")


@pytest.mark.timeout(900)
def test_the_docs_walkthrough_in_a_browser(stack: WebStack, browser: Browser) -> None:
    base = stack.url("web")
    ctx = browser.new_context(
        base_url=base, viewport={"width": 1280, "height": 900}, timezone_id="Europe/Berlin"
    )
    page = ctx.new_page()
    page.set_default_timeout(30_000)

    # Sign in: a wrong password is a message, the right one lands on the incidents.
    page.goto("/incidents")
    expect(page).to_have_url(re.compile(r"/signin"))
    shot(page, "signin", narrow=True)
    page.get_by_label("Email address").fill(stack.admin_email)
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text("Wrong email or password").first).to_be_visible()
    page.get_by_label("Password").fill(stack.admin_password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Incidents", level=1)).to_be_visible()
    expect(page.locator(".who")).to_contain_text("Demo Admin")

    # Connect an internal integration (checked with the Sentry stand-in before it is saved).
    page.get_by_role("link", name="Integrations").click()
    expect(page.get_by_text("No Sentry organization is connected yet.")).to_be_visible()
    page.get_by_label("Sentry organization slug").fill("acme")
    page.get_by_label("Sentry URL").fill(stack.url("sentry-stub"))
    page.get_by_label("Token").fill(STUB_TOKEN)
    page.get_by_label("Client secret").fill(SECRET)
    page.get_by_role("button", name="Connect", exact=True).click()
    hook = page.get_by_label("Webhook URL (paste into Sentry)")
    expect(hook).to_have_value(re.compile(r"/webhooks/sentry/[0-9a-f-]{36}$"))
    connection_id = hook.input_value().rsplit("/", 1)[1]
    shot(page, "integrations", narrow=True)

    # The docs' services, then their four mappings (internal-tools inactive).
    for _, service, _ in DOCS_TABLE:
        page.goto("/org/services")
        page.get_by_label("Name", exact=True).fill(service)
        page.get_by_role("button", name=re.compile("Create")).click()
        expect(page.locator("main")).to_contain_text(service)
    shot(page, "services", narrow=True)
    # A deploy of Payments API just before its incident: a suspect with its signals.
    with stack.api() as api:
        services = api.get("/api/v1/services", params={"limit": "200"}).json()["items"]
        payments = next(s["id"] for s in services if s["name"] == "Payments API")
        now = datetime.now(UTC)
        made = api.post(
            "/api/v1/deploys",
            json={
                "service_id": payments,
                "version": "checkout-api@2.14.0",
                "environment": "production",
                "started_at": (now - timedelta(minutes=20)).isoformat(),
                "finished_at": (now - timedelta(minutes=12)).isoformat(),
                "changed_paths": ["checkout/pricing.py"],
                "url": "javascript:alert(1)",  # attacker-controlled: shown as text, never a link
            },
        )
        assert made.status_code == 201, made.text
    for project, service, active in DOCS_TABLE:
        page.goto("/org/integrations/sentry/mappings")
        page.get_by_role("link", name="Add Mapping").first.click()
        expect(page.get_by_role("heading", name="Add Mapping")).to_be_visible()
        page.get_by_label("Sentry project slug").fill(project)
        page.get_by_label("BlameTrail service").select_option(label=service)
        if not active:
            page.get_by_label("Inactive: receive but do not process").check()
        if project == "frontend":
            shot(page, "mapping-new", narrow=True)
        page.get_by_role("button", name="Save").click()
        expect(row(page, project)).to_contain_text(service)
        expect(row(page, project)).to_contain_text("Active" if active else "Inactive")
    shot(page, "mappings", narrow=True)

    # One project, one service: a second mapping of frontend names the existing one.
    page.get_by_role("link", name="Add Mapping").first.click()
    page.get_by_label("Sentry project slug").fill("frontend")
    page.get_by_label("BlameTrail service").select_option(label="Email Worker")
    page.get_by_role("button", name="Save").click()
    expect(page.locator(".notice.warn")).to_contain_text("already mapped to Web App")
    shot(page, "mapping-conflict")

    # Webhooks for each project and an unmapped one: exactly three incidents appear on the
    # incidents page, on the right services, without reloading it.
    page.goto("/incidents")
    expect(page.locator("#incident-rows")).to_contain_text("No incidents")
    for n, project in enumerate(("frontend", "payments-api", "email-worker", "internal-tools")):
        assert stack.post_webhook(connection_id, SECRET, project, f"71000000{n}") == 200
    assert stack.post_webhook(connection_id, SECRET, "analytics", "710000009") == 200
    expect(incident_rows(page)).to_have_count(3, timeout=SLOW)
    for project, service, _ in DOCS_TABLE[:3]:
        expect(incident_rows(page).filter(has_text=f"KeyError in {project}")).to_contain_text(
            service
        )
    expect(page.locator("#incident-rows")).not_to_contain_text("internal-tools")
    expect(page.locator("#incident-rows")).not_to_contain_text("analytics")
    shot(page, "incidents", narrow=True)

    # Open one: stacktrace, tags, breadcrumbs, user, suspects (once enriched).
    page.get_by_role("link", name="KeyError in payments-api").click()
    expect(page.get_by_role("heading", name="KeyError in payments-api", level=1)).to_be_visible()
    for _ in range(60):  # enrichment is asynchronous: the page says so until it lands
        if page.get_by_role("heading", name="Stacktrace").count():
            break
        page.wait_for_timeout(1000)
        page.reload()
    for heading in ("Stacktrace", "Tags", "Breadcrumbs", "User", "Suspect deploys", "Timeline"):
        expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()

    def section(title: str) -> Locator:
        return page.locator(f'section[aria-labelledby="{title}-title"]')

    expect(section("st")).to_contain_text("compute_total")
    expect(section("tags").locator("tbody tr").first).to_be_visible()
    expect(section("tags")).to_contain_text(re.compile("release", re.I))
    expect(section("user")).to_contain_text("zo\u00eb@customer.example")
    expect(section("bc").locator("tbody tr").first).to_be_visible()
    for _ in range(60):  # scoring is asynchronous too
        if "checkout-api@2.14.0" in (section("sus").text_content() or ""):
            break
        page.wait_for_timeout(1000)
        page.reload()
    expect(section("sus").locator("li.suspect").first).to_contain_text("checkout-api@2.14.0")
    expect(section("sus").locator("li.suspect").first.locator("tbody tr").first).to_be_visible()
    expect(section("sus")).to_contain_text("considered")
    expect(section("sus").locator('a[href^="javascript"]')).to_have_count(0)
    # the actions the open incident allows, and only those
    expect(page.get_by_role("button", name="Acknowledge")).to_be_visible()
    expect(page.get_by_role("button", name="Resolve")).to_be_visible()
    expect(page.get_by_role("button", name="Reopen")).to_have_count(0)
    shot(page, "incident", narrow=True)

    # Toggle: payments-api off -> its next webhook is ignored as inactive.
    page.goto("/org/integrations/sentry/mappings")
    row(page, "payments-api").get_by_role("switch").click()
    expect(row(page, "payments-api")).to_contain_text("Inactive")
    assert stack.post_webhook(connection_id, SECRET, "payments-api", "710000011") == 200
    # Edit: frontend to Payments API; its incident stays on Web App, new ones go to Payments API.
    row(page, "frontend").get_by_role("link", name="Edit").click()
    expect(page.locator("main")).to_contain_text("Existing incidents")
    shot(page, "mapping-edit")
    page.get_by_label("BlameTrail service").select_option(label="Payments API")
    page.get_by_role("button", name="Save").click()
    expect(row(page, "frontend")).to_contain_text("Payments API")
    # Delete (behind a confirmation): email-worker's next webhook is ignored as unmapped.
    row(page, "email-worker").get_by_role("link", name="Delete").click()
    shot(page, "mapping-delete")
    page.get_by_role("button", name=re.compile("Delete")).click()
    expect(row(page, "email-worker")).to_have_count(0)
    assert stack.post_webhook(connection_id, SECRET, "frontend", "710000012") == 200
    assert stack.post_webhook(connection_id, SECRET, "email-worker", "710000013") == 200

    page.goto("/incidents")
    expect(incident_rows(page)).to_have_count(4, timeout=SLOW)
    fresh = incident_rows(page).first  # newest first: frontend's second, on Payments API
    expect(fresh).to_contain_text("KeyError in frontend")
    expect(fresh).to_contain_text("Payments API")
    frontend = incident_rows(page).filter(has_text="KeyError in frontend")
    expect(frontend).to_have_count(2)
    expect(frontend.last).to_contain_text("Web App")  # the first one did not move
    expect(incident_rows(page).filter(has_text="KeyError in payments-api")).to_have_count(1)
    expect(incident_rows(page).filter(has_text="KeyError in email-worker")).to_have_count(1)

    # Ignored webhooks: internal-tools and payments-api (inactive), email-worker and analytics
    # (unmapped); map analytics from there, prefilled.
    page.goto("/org/integrations/sentry/ignored")
    ignored = page.locator("#ignored tbody tr[data-project]")
    for project in ("internal-tools", "payments-api", "email-worker", "analytics"):
        expect(ignored.filter(has_text=project).first).to_be_visible(timeout=SLOW)
    shot(page, "ignored", narrow=True)
    page.locator('#ignored tr[data-project="analytics"]').get_by_role(
        "link", name="Map this project"
    ).first.click()
    expect(page.get_by_label("Sentry project slug")).to_have_value("analytics")
    page.get_by_label("BlameTrail service").select_option(label="Web App")
    page.get_by_role("button", name="Save").click()
    expect(row(page, "analytics")).to_contain_text("Web App")

    # ... and process its ignored webhook from there: progress, then the count; its incident
    # appears on the service just mapped.
    page.goto("/org/integrations/sentry/ignored?project=analytics")
    page.locator('#ignored tr[data-project="analytics"]').first.get_by_role(
        "button", name="Process the ignored webhooks of this project"
    ).click()
    expect(page.get_by_role("heading", name=re.compile("of analytics"))).to_be_visible()
    expect(page.locator("#job progress")).to_be_visible()
    expect(page.locator("#job [data-done]")).to_be_visible(timeout=SLOW)  # no reload
    expect(page.locator("#job")).to_contain_text("1 webhook processed again")
    shot(page, "job", narrow=True)
    page.goto("/incidents")
    expect(incident_rows(page).filter(has_text="KeyError in analytics")).to_contain_text(
        "Web App", timeout=SLOW
    )
    expect(incident_rows(page)).to_have_count(5)

    # Sign out: the pages need a sign-in again.
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/signin"))
    page.goto("/org/integrations/sentry/mappings")
    expect(page).to_have_url(re.compile(r"/signin"))
    ctx.close()


@pytest.mark.timeout(600)
def test_connect_with_sentry_installs_the_public_app_in_a_browser(
    stack: WebStack, browser: Browser
) -> None:
    """Integrations > Sentry > "Connect with Sentry": the form posts to the web, which redirects
    to the connect link (the edge: the API), then to the stand-in's install page, then back to
    the API's callback and its "Connect?" page; confirmed, the connection is listed on the
    Integrations page. The pages' CSP form-action must let every redirect of that chain go."""
    ctx = browser.new_context(base_url=stack.url("web"), viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    page.set_default_timeout(30_000)
    refused: list[str] = []
    page.on("console", lambda m: refused.append(m.text) if "Content Security" in m.text else None)

    page.goto("/signin")
    page.get_by_label("Email address").fill(stack.admin_email)
    page.get_by_label("Password").fill(stack.admin_password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Incidents", level=1)).to_be_visible()

    page.goto("/org/integrations/sentry")
    csp = page.request.get("/org/integrations/sentry").headers["content-security-policy"]
    assert f"form-action 'self' {stack.url('edge')} {stack.url('sentry-stub')}" in csp
    page.get_by_role("button", name="Connect with Sentry").click()
    # the API's page on the public host, after Sentry's install page: which organization
    expect(page).to_have_url(re.compile(re.escape(stack.url("edge")) + "/integrations/sentry/"))
    expect(page.get_by_role("heading", name="Connect Sentry")).to_be_visible()
    expect(page.locator("body")).to_contain_text("globex")
    shot(page, "connect-public-app")
    page.get_by_role("button", name="Connect", exact=True).click()
    expect(page.get_by_role("heading", name="Sentry connected")).to_be_visible()
    expect(page.locator("body")).to_contain_text("globex")

    page.goto(stack.url("web") + "/org/integrations/sentry")
    listed = page.locator("main").filter(has_text="Public app (OAuth)")
    expect(listed).to_contain_text("globex")
    shot(page, "integrations-oauth")
    assert refused == []
    ctx.close()
