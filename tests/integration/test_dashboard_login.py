"""Dashboard sign-in and its forms: a session id in the cookie (never the token), same-origin
forms only, a rate limit, a small body, and retry/cancel behind a CSRF token."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest

from common.repository import Repository
from common.settings import DbUrl
from producer import dashboard
from producer.sessions import LOGIN_ATTEMPTS, LoginLimiter
from tests.integration.test_dashboard import seed
from tests.producer_support import API_TOKEN, CONSUMER_TOKEN, producer_settings, running_producer


@pytest.fixture(autouse=True)
def fresh_limiter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own sign-in budget (the limiter is per process)."""
    monkeypatch.setattr(dashboard, "LOGIN_LIMITER", LoginLimiter())


async def test_sign_in_when_reads_are_closed(repo: Repository, db_url: DbUrl) -> None:
    async with running_producer(producer_settings(db_url, open_reads=False)) as client:
        page = await client.get("/dashboard?status=wait", allow_redirects=False)
        assert page.status == 303
        location = urlsplit(page.headers["Location"])
        assert location.path == "/dashboard/login"
        assert parse_qs(location.query) == {"next": ["/dashboard?status=wait"]}
        form = await client.get("/dashboard/login?next=/dashboard")
        assert form.status == 200 and 'name="token"' in await form.text()
        refused = await client.post("/dashboard/login", data={"token": "wrong",
                                                              "next": "/dashboard"})
        assert refused.status == 403 and "not valid" in await refused.text()
        assert (await client.get("/api/v1/tasks")).status == 401
        signed = await client.post("/dashboard/login", allow_redirects=False,
                                   data={"token": API_TOKEN, "next": "https://evil.example/"})
        assert signed.status == 303 and signed.headers["Location"] == "/dashboard"
        cookie = signed.cookies["bisect_session"]
        assert cookie["httponly"] and cookie["samesite"] == "Strict"
        assert not cookie["secure"]  # plain http here
        assert API_TOKEN not in cookie.value and len(cookie.value) >= 32
        assert (await client.get("/dashboard")).status == 200
        assert (await client.get("/api/v1/tasks")).status == 200  # reads take the cookie
        # Writes never do: a cross-site form could otherwise submit with it.
        write = await client.post("/api/v1/tasks", json={"bad_job_id": "1", "error_id": "e"})
        assert write.status == 401
        # A made-up session id reads nothing.
        client.session.cookie_jar.clear()
        forged = await client.get("/api/v1/tasks", cookies={"bisect_session": "forged"})
        assert forged.status == 401


async def test_sign_in_refuses_other_sites_large_bodies_and_floods(repo: Repository,
                                                                   db_url: DbUrl) -> None:
    async with running_producer(producer_settings(db_url)) as client:
        cross = await client.post("/dashboard/login", headers={"Origin": "https://evil.example"},
                                  data={"token": API_TOKEN})
        assert cross.status == 403 and "not sent from this site" in await cross.text()
        assert "bisect_session" not in cross.cookies
        huge = await client.post("/dashboard/login", data={"token": "x" * 10_000})
        assert huge.status == 413
        secure = await client.post("/dashboard/login", allow_redirects=False,
                                   headers={"X-Forwarded-Proto": "https"},
                                   data={"token": API_TOKEN})
        assert secure.status == 303 and secure.cookies["bisect_session"]["secure"]
        statuses = [(await client.post("/dashboard/login", data={"token": "guess"})).status
                    for _ in range(LOGIN_ATTEMPTS)]
        assert statuses.count(429) >= 1 and 403 in statuses
        limited = await client.post("/dashboard/login", data={"token": API_TOKEN})
        assert limited.status == 429 and int(limited.headers["Retry-After"]) >= 1


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None, "no retry/cancel form on the page"
    return found.group(1)


async def test_retry_and_cancel_buttons_need_a_session_and_its_csrf_token(
        repo: Repository, db_url: DbUrl) -> None:
    async with running_producer(producer_settings(db_url)) as client:
        seeded = await seed(client, repo)
        page = f"/dashboard/tasks/{seeded.waiting}"
        anonymous = await (await client.get(page)).text()
        assert 'name="csrf"' not in anonymous and "Sign in with an API token" in anonymous
        no_session = await client.post(f"{page}/cancel", allow_redirects=False,
                                       data={"csrf": "x"})
        assert no_session.status == 303 and "/dashboard/login" in no_session.headers["Location"]

        consumer = await client.post("/dashboard/login", allow_redirects=False,
                                     data={"token": CONSUMER_TOKEN, "next": page})
        assert consumer.status == 303
        assert 'name="csrf"' not in await (await client.get(page)).text()

        await client.post("/dashboard/login", data={"token": API_TOKEN, "next": page})
        html = await (await client.get(page)).text()
        token = _csrf(html)
        assert ">Cancel</button>" in html and ">Retry</button>" not in html
        forged = await client.post(f"{page}/cancel", data={"csrf": "wrong"})
        assert forged.status == 403 and "stale" in await forged.text()
        cross = await client.post(f"{page}/cancel", data={"csrf": token},
                                  headers={"Origin": "https://evil.example"})
        assert cross.status == 403
        task = (await (await client.get(f"/api/v1/tasks/{seeded.waiting}")).json())["task"]
        assert task["status"] == "wait"

        cancelled = await client.post(f"{page}/cancel", allow_redirects=False,
                                      data={"csrf": token})
        assert cancelled.status == 303
        assert cancelled.headers["Location"] == f"{page}?done=cancelled"
        html = await (await client.get(f"{page}?done=cancelled")).text()
        assert "Cancel requested" in html and ">Retry</button>" in html
        retried = await client.post(f"{page}/retry", allow_redirects=False,
                                    data={"csrf": _csrf(html)})
        assert retried.status == 303
        task = (await (await client.get(f"/api/v1/tasks/{seeded.waiting}")).json())["task"]
        assert task["status"] == "wait"
        again = await client.post(f"/dashboard/tasks/{seeded.completed}/retry",
                                  data={"csrf": token})
        assert again.status == 409
