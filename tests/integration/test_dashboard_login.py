"""A dashboard whose reads need a token: browsers sign in once, writes never take the cookie."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from common.repository import Repository
from common.settings import DbUrl
from tests.producer_support import API_TOKEN, producer_settings, running_producer


async def test_sign_in_when_reads_are_closed(repo: Repository, db_url: DbUrl) -> None:
    async with running_producer(producer_settings(db_url, open_reads=False)) as client:
        page = await client.get("/dashboard?status=wait", allow_redirects=False)
        assert page.status == 303
        location = urlsplit(page.headers["Location"])
        assert location.path == "/dashboard/login"
        assert parse_qs(location.query) == {"next": ["/dashboard?status=wait"]}
        form = await client.get("/dashboard/login?next=/dashboard")
        assert form.status == 200 and "name=token" in await form.text()
        refused = await client.post("/dashboard/login", data={"token": "wrong",
                                                              "next": "/dashboard"})
        assert refused.status == 403 and "not valid" in await refused.text()
        assert (await client.get("/api/v1/tasks")).status == 401
        signed = await client.post("/dashboard/login", allow_redirects=False,
                                   data={"token": API_TOKEN, "next": "https://evil.example/"})
        assert signed.status == 303 and signed.headers["Location"] == "/dashboard"
        cookie = signed.cookies["bisect_token"]
        assert cookie["httponly"] and cookie["samesite"] == "Strict"
        assert (await client.get("/dashboard")).status == 200
        assert (await client.get("/api/v1/tasks")).status == 200  # reads take the cookie
        # Writes never do: a cross-site form could otherwise submit with it.
        write = await client.post("/api/v1/tasks", json={"bad_job_id": "1", "error_id": "e"})
        assert write.status == 401
