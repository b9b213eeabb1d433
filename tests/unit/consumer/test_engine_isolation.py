"""What the consumer hands its engine: an allow-listed environment, the compass account in
the spec only, a timeout it caps, and events scrubbed of its secrets."""

from __future__ import annotations

from consumer.client import ClaimedTask
from consumer.redact import Scrubber, secrets_in
from consumer.runner import build_spec, engine_environment, task_timeout_s
from consumer.settings import ConsumerSettings

CONSUMER_ENV = {
    "PATH": "/usr/bin", "HOME": "/root", "LANG": "C.UTF-8", "BISECT_LOG_LEVEL": "info",
    "BISECT_CONSUMER_TOKEN": "consumer-tok-1", "BISECT_COMPASS_TOKEN": "compass-tok-2",
    "BISECT_COMPASS_ACCOUNT": "bisect-bot", "BISECT_DB_URL": "mysql://u:db-pw-3@db:3306/b",
    "BISECT_API_TOKENS": "api-tok-4", "AWS_SECRET_ACCESS_KEY": "aws-5",
    "BISECT_SANDBOX_PASS_ENV": "CI_RUN", "CI_RUN": "r1", "UNRELATED": "x",
}


def test_engine_environment_is_an_allow_list() -> None:
    env = engine_environment(CONSUMER_ENV)
    assert env["PATH"] == "/usr/bin" and env["CI_RUN"] == "r1"
    assert env["BISECT_SANDBOX"] == "auto"  # the consumer's default, spelled out
    text = repr(env)
    for secret in ("consumer-tok-1", "compass-tok-2", "db-pw-3", "api-tok-4", "aws-5",
                   "bisect-bot"):
        assert secret not in text
    assert "UNRELATED" not in env and "BISECT_DB_URL" not in env


def test_compass_account_travels_in_the_spec() -> None:
    settings = ConsumerSettings.from_env(CONSUMER_ENV)
    task = ClaimedTask(id=7, claim=1, bad_job_id="123", error_id="e.1", git_url="https://g/x",
                       known_bad_commit="bad", tester="compass")
    spec = build_spec(task, settings.testers["compass"], settings=settings,
                      known_verdicts=[], work_dir="/w")
    assert spec["tester"]["my_account"] == "bisect-bot"
    assert spec["tester"]["my_token"] == "compass-tok-2"
    assert "my_token" not in settings.testers["compass"].tester_spec()  # not kept around


def test_task_timeout_is_the_smaller_of_task_and_consumer() -> None:
    week = 7 * 24 * 3600
    assert task_timeout_s(week, 4 * 3600) == 4 * 3600
    assert task_timeout_s(60, 4 * 3600) == 60
    assert task_timeout_s(None, 300) == 300 and task_timeout_s(0, 300) == 300


def test_secrets_are_scrubbed_from_events() -> None:
    spec = {"tester": {"my_token": "spec-tok-6"}, "db_url": "mysql://u:p%40ss-7@db/b"}
    scrub = Scrubber(secrets_in(CONSUMER_ENV, spec))
    event = {"event": "step", "detail": "exit 1; output tail: TOKEN=consumer-tok-1 "
             "pw=db-pw-3 t=spec-tok-6 p=p@ss-7 enc=p%40ss-7", "n": 3,
             "list": ["compass-tok-2"]}
    clean = scrub.any(event)
    assert clean["n"] == 3
    text = repr(clean)
    for secret in ("consumer-tok-1", "db-pw-3", "spec-tok-6", "p@ss-7", "p%40ss-7",
                   "compass-tok-2"):
        assert secret not in text
    assert Scrubber(["ab"]).text("abc") == "abc"  # too short to be a secret worth masking
