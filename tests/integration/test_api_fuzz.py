"""Bad input, generated: no route answers 5xx or shows a stack trace, whatever it is sent.

Three passes: every route with generated bodies; the consumer routes (claim, heartbeat,
finish) with valid bodies one field of which is generated, against tasks really claimed (so
the writer and the database see the values); and the inputs the security review sent
(issue 15): lone surrogates, 100,000-deep JSON, NaN, huge numbers, control characters, a
non-number confidence, an over-long bad_commit."""

from __future__ import annotations

import collections
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.repository import Repository
from common.settings import DbUrl
from producer.openapi import openapi_path
from producer.routes import ROUTES
from tests.producer_support import CONSUMER, WRITE, producer_settings, running_producer

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=12)
FIELDS = st.sampled_from(["bad_job_id", "error_id", "priority", "good_commit", "tester",
                          "timeout", "repo_url", "bad_commit", "tasks", "consumer_id", "slots",
                          "testers", "task_ids", "task_id", "outcome", "reason", "result",
                          "leases", "lease", "wait_s"])
BODIES = (st.dictionaries(FIELDS, JSON_VALUES, max_size=8).map(json.dumps)
          | JSON_VALUES.map(json.dumps)
          | st.binary(max_size=64).map(lambda b: b.decode("latin-1")))
SEGMENTS = st.sampled_from(["1", "0", "-1", "abc", "99999999999999999999", "%00", "1e3",
                            "9223372036854775807"])


def _concrete(path: str, segment: str) -> str:
    return openapi_path(path).replace("{id}", segment)


@pytest.mark.timeout(240)
async def test_no_route_answers_5xx_to_generated_input(repo: Repository, db_url: DbUrl) -> None:
    async with running_producer(producer_settings(db_url)) as client:
        failures: list[str] = []

        @settings(max_examples=400, deadline=None,
                  suppress_health_check=list(HealthCheck))
        @given(route_index=st.integers(0, len(ROUTES) - 1), body=BODIES, segment=SEGMENTS,
               query=st.dictionaries(st.sampled_from(["status", "limit", "cursor", "error_id",
                                                      "group", "x"]),
                                     st.text(max_size=20), max_size=3))
        def probe(route_index: int, body: str, segment: str, query: dict[str, str]) -> None:
            route = ROUTES[route_index]
            headers: dict[str, Any] = {**(CONSUMER if "internal" in route.path else WRITE),
                                       "Content-Type": "application/json"}
            path = _concrete(route.path, segment)
            pending.append((route.method, path, body, query, headers))

        pending: list[tuple[str, str, str, dict[str, str], dict[str, Any]]] = []
        probe()
        for method, path, body, query, headers in pending:
            answer = await client.request(method, path, data=body.encode("utf-8", "replace"),
                                          params=query, headers=headers)
            text = await answer.text()
            if answer.status >= 500 or "Traceback" in text:
                failures.append(f"{method} {path} {body[:80]!r} -> {answer.status} {text[:200]}")
        assert not failures, "\n".join(failures[:10])


async def _send(client: Any, method: str, path: str, body: str | bytes,
                headers: dict[str, Any], failures: list[str]) -> int:
    data = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    answer = await client.request(method, path, data=data, headers=headers)
    text = await answer.text()
    if answer.status >= 500 or "Traceback" in text:
        failures.append(f"{method} {path} {data[:80]!r} -> {answer.status} {text[:200]}")
    return answer.status


RESULT_FIELDS = st.sampled_from(["bad_commit", "first_bad_id", "first_result_root",
                                 "work_dir", "confidence", "verification", "subject",
                                 "tested"])
NASTY_TEXT = st.sampled_from(["\ud800", "a\u0000b", "\u0001", "x" * 300, "-", "",
                              "\udfff\ud800", "\u202e", "a" * 70_000])


@pytest.mark.timeout(240)
async def test_consumer_routes_with_one_generated_field(repo: Repository, db_url: DbUrl) -> None:
    async with running_producer(producer_settings(db_url)) as client:
        tasks = [{"bad_job_id": f"fz{n}", "error_id": "e.1", "repo_url": "https://git.example/a",
                  "bad_commit": "abc1234"} for n in range(40)]
        await client.post("/api/v1/tasks/batch", json={"tasks": tasks}, headers=WRITE)
        claimed = await (await client.post("/api/v1/internal/claim", headers=CONSUMER, json={
            "consumer_id": "c1", "slots": 40, "testers": ["compass"]})).json()
        held = [(t["id"], t["lease"]) for t in claimed["tasks"]]
        assert len(held) == 40
        pending: list[tuple[str, str]] = []

        @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
        @given(route=st.sampled_from(["claim", "heartbeat", "finish", "result"]),
               field=FIELDS | RESULT_FIELDS, value=JSON_VALUES | NASTY_TEXT,
               pick=st.integers(0, 39), outcome=st.sampled_from(["completed", "failed",
                                                                  "released"]))
        def probe(route: str, field: str, value: Any, pick: int, outcome: str) -> None:
            task_id, lease = held[pick]
            if route == "claim":
                body: dict[str, Any] = {"consumer_id": "c2", "slots": 1,
                                        "testers": ["compass"]}
            elif route == "heartbeat":
                body = {"consumer_id": "c1", "leases": {task_id: lease}}
            else:
                body = {"consumer_id": "c1", "task_id": task_id, "lease": lease,
                        "outcome": outcome, "reason": "r",
                        "result": {"bad_commit": "a" * 40, "confidence": 0.5}}
            if route == "result":
                body["result"][field] = value
            else:
                body[field] = value
            text = json.dumps(body)  # ensure_ascii: a lone surrogate as its escape
            path = "finish" if route == "result" else route
            pending.append((f"/api/v1/internal/{path}", text))

        probe()
        failures: list[str] = []
        headers = {**CONSUMER, "Content-Type": "application/json"}
        statuses = collections.Counter(
            [await _send(client, "POST", path, text, headers, failures)
             for path, text in pending])
        assert not failures, "\n".join(failures[:10])
        # The generated values reached the writer (accepted) as well as the checks (refused).
        assert statuses[200] > 0 and statuses[422] > 0, statuses


REVIEW_BODIES = [
    '{"bad_job_id": "1", "error_id": "\\ud800"}',
    '{"consumer_id": "c\\udfff", "slots": 1, "testers": ["compass"]}',
    "[" * 100_000 + "]" * 100_000,
    '{"a": ' * 5000 + "1" + "}" * 5000,
    '{"bad_job_id": "1", "error_id": "e", "priority": NaN}',
    '{"slots": Infinity}',
    '{"bad_job_id": "1", "error_id": "e", "priority": ' + "9" * 5000 + "}",
    '{"bad_job_id": "1", "error_id": "e", "repo_url": "https://git.example/\\u0000x", '
    '"bad_commit": "abc"}',
    '{"consumer_id": "c1", "task_id": "1", "lease": "x", "outcome": "completed", '
    '"result": {"confidence": "high", "bad_commit": "' + "a" * 5000 + '"}}',
    '{"tasks": [{"bad_job_id": "1", "error_id": "\\ud800"}, {"bad_job_id": "2"}]}',
    '{"consumer_id": "c1", "leases": {"1": "\\ud800", "x": 1}}',
    "\xff\xfe not utf-8",
]


@pytest.mark.timeout(240)
async def test_what_the_security_review_sent_is_never_a_5xx(repo: Repository,
                                                           db_url: DbUrl) -> None:
    async with running_producer(producer_settings(db_url)) as client:
        failures: list[str] = []
        for route in ROUTES:
            if route.method != "POST":
                continue
            headers = {**(CONSUMER if "internal" in route.path else WRITE),
                       "Content-Type": "application/json"}
            path = _concrete(route.path, "1")
            for body in REVIEW_BODIES:
                raw = body.encode("latin-1") if body.startswith("\xff") else body
                status = await _send(client, "POST", path, raw, headers, failures)
                assert status < 500
        assert not failures, "\n".join(failures[:10])
