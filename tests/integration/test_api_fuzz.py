"""Bad input, generated: no route answers 5xx or shows a stack trace, whatever it is sent."""

from __future__ import annotations

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
                          "testers", "task_ids", "task_id", "outcome", "reason", "result"])
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
