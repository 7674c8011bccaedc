"""The jobs dashboard on the real gateway: sign-in with an API key (a signed session
cookie, never the key), queued and finished jobs from SQL with filters, a job's timeline
and masked audit events, tenants kept apart, a revoked key signed out; and a real headless
Chromium that signs in and clicks through (screenshots to $SEEKQ_SCREENSHOT_DIR)."""

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Stack, chrome_driver, make_context, unique

SECRET_TEXT = "card 4111 1111 1111 1111 for jane@example.com"


@dataclass
class Seeded:
    key: str
    queued: str
    done: str


@pytest.fixture(scope="module")
def seeded(stack: Stack) -> Seeded:
    tenant = unique("dash")
    key = stack.key(tenant)
    with stack.client(tenant) as client:
        done = client.submit("ping", {"payload": SECRET_TEXT})["id"]
        assert client.wait(done, timeout_s=60)["status"] == "succeeded"
    quiet = make_context(stack.database_url, stack.redis_db + 2, stack.tmp)  # no worker
    try:
        queued = quiet.service.submit(quiet.keys.authenticate(key), "ping", {}).job.id
    finally:
        quiet.close()
    return Seeded(key, queued, done)


@pytest.fixture
def browser_session(stack: Stack, seeded: Seeded) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        signed = client.post("/dashboard/login", data={"api_key": seeded.key})
        assert signed.status_code == 303 and signed.headers["location"] == "/dashboard"
        yield client


def test_pages_need_a_session(stack: Stack) -> None:
    with httpx.Client(base_url=stack.url) as client:
        for path in ["/dashboard", f"/dashboard/jobs/{unique()}"]:
            answer = client.get(path)
            assert answer.status_code == 303 and answer.headers["location"] == "/dashboard/login"
        bad = client.post("/dashboard/login", data={"api_key": "sq_0000000000000000_" + "x" * 43})
        assert bad.status_code == 401 and "unknown API key" in bad.text
    forged = {"seekq_session": "0" * 16 + ".9999999999." + "0" * 64}
    with httpx.Client(base_url=stack.url, cookies=forged) as client:
        assert client.get("/dashboard").status_code == 303


def test_the_session_cookie_is_signed_and_never_the_key(stack: Stack, seeded: Seeded) -> None:
    with httpx.Client(base_url=stack.url) as client:
        signed = client.post("/dashboard/login", data={"api_key": seeded.key})
    cookie = signed.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/dashboard" in cookie
    secret_half = seeded.key.rsplit("_", 1)[1]
    assert secret_half not in cookie


def test_jobs_from_sql_with_filters(browser_session: httpx.Client, seeded: Seeded) -> None:
    page = browser_session.get("/dashboard").text
    assert seeded.queued in page and seeded.done in page
    queued = browser_session.get("/dashboard", params={"status": "queued"}).text
    assert seeded.queued in queued and seeded.done not in queued
    odd = browser_session.get("/dashboard", params={"status": "sleeping"})
    assert odd.status_code == 200 and "status" in odd.text and seeded.done not in odd.text


def test_a_job_page_has_its_timeline_and_masked_audit(
    browser_session: httpx.Client, seeded: Seeded
) -> None:
    page = browser_session.get(f"/dashboard/jobs/{seeded.done}").text
    for moment in ("queued", "started", "succeeded"):
        assert re.search(rf"<th>{moment}</th><td>\d{{4}}-", page), moment
    assert "job.submitted" in page and "CARD_NUMBER" in page
    assert "4111 1111 1111 1111" not in page and "jane@example.com" not in page


def test_tenants_are_kept_apart_and_revocation_signs_out(
    stack: Stack, browser_session: httpx.Client, seeded: Seeded
) -> None:
    other = stack.context.keys.create(unique("dash-other"))
    with httpx.Client(base_url=stack.url) as client:
        client.post("/dashboard/login", data={"api_key": other.secret})
        assert seeded.done not in client.get("/dashboard").text
        assert client.get(f"/dashboard/jobs/{seeded.done}").status_code == 404
        stack.context.keys.revoke(other.key_id)
        assert client.get("/dashboard").status_code == 303


def test_a_browser_signs_in_and_opens_a_job(stack: Stack, seeded: Seeded, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    shots = Path(os.environ.get("SEEKQ_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    driver = chrome_driver()
    try:
        driver.get(stack.url + "/dashboard")
        assert driver.current_url.endswith("/dashboard/login")
        driver.find_element(By.NAME, "api_key").send_keys(seeded.key)
        driver.find_element(By.CSS_SELECTOR, "form[action='/dashboard/login'] button").click()
        table = shown(driver, "jobs")  # click() returns before the next page loads
        assert seeded.queued in table.text and seeded.done in table.text
        driver.save_screenshot(str(shots / "dashboard-jobs.png"))
        driver.find_element(By.LINK_TEXT, seeded.done).click()
        assert "succeeded" in shown(driver, "timeline").text
        audit = driver.find_element(By.ID, "audit").text
        assert "CARD_NUMBER" in audit and "4111 1111" not in audit
        driver.save_screenshot(str(shots / "dashboard-job.png"))
    finally:
        driver.quit()


def shown(driver: Any, element_id: str, timeout_s: float = 30) -> Any:
    """The element once the page that holds it has loaded; a timeout names the page the
    browser is on instead of selenium's bare 'no such element'."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout_s).until(
            expected_conditions.presence_of_element_located((By.ID, element_id))
        )
    except TimeoutException:
        pytest.fail(f"no #{element_id} after {timeout_s}s on {driver.current_url}: {driver.title}")


def test_an_admin_tenant_can_filter_by_tenant(stack: Stack, seeded: Seeded) -> None:
    from fastapi.testclient import TestClient

    from api_gateway.app import create_app
    from api_gateway.settings import GatewaySettings

    admin_tenant = unique("ops")
    admin = stack.context.keys.create(admin_tenant)
    owner = stack.context.keys.authenticate(seeded.key).tenant_name
    settings = GatewaySettings(dashboard_admin_tenants=frozenset({admin_tenant}))
    with TestClient(create_app(stack.context, settings)) as client:
        client.post("/dashboard/login", data={"api_key": admin.secret})
        own = client.get("/dashboard").text
        assert 'name="tenant"' in own and seeded.done not in own
        theirs = client.get("/dashboard", params={"tenant": owner}).text
        assert seeded.done in theirs and seeded.queued in theirs
        assert f"/dashboard/jobs/{seeded.done}?tenant={owner}" in theirs
        job = client.get(f"/dashboard/jobs/{seeded.done}", params={"tenant": owner})
        assert job.status_code == 200 and "CARD_NUMBER" in job.text
        unknown = client.get("/dashboard", params={"tenant": "no-such-tenant"}).text
        assert "no tenant named" in unknown
    # Without the setting, the same key's filter is ignored: its own jobs only.
    with TestClient(create_app(stack.context, GatewaySettings())) as client:
        client.post("/dashboard/login", data={"api_key": admin.secret})
        page = client.get("/dashboard", params={"tenant": owner}).text
        assert 'name="tenant"' not in page and seeded.done not in page
