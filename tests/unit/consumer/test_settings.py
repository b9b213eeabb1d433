"""Consumer settings and tester profiles: parsing and errors that name the variable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from common.errors import ConfigError
from consumer import profiles as profiles_module
from consumer.profiles import COMPASS, load_profiles
from consumer.settings import (
    DEFAULT_ENGINE_COMMAND,
    DEFAULT_HTTP_PORT,
    ConsumerSettings,
    TimeoutAction,
)


def test_defaults() -> None:
    s = ConsumerSettings.from_env({})
    assert s.producer_url == "http://127.0.0.1:8080"
    assert s.slots == 2
    assert s.grace_s == 30
    assert s.http_port == DEFAULT_HTTP_PORT
    assert s.timeout_action is TimeoutAction.FAIL
    assert s.engine_command == DEFAULT_ENGINE_COMMAND
    assert s.tester_names == [COMPASS]
    assert not s.drain
    assert s.consumer_id.count("-") >= 2


def test_values_are_read() -> None:
    s = ConsumerSettings.from_env({
        "BISECT_PRODUCER_URL": "http://p:9000/", "BISECT_CONSUMER_TOKEN": "t0k",
        "BISECT_CONSUMER_ID": "c-1", "BISECT_CONSUMER_SLOTS": "5", "BISECT_POLL_MAX_S": "1.5",
        "BISECT_TIMEOUT_ACTION": "retry", "BISECT_GRACE_S": "2", "BISECT_DRAIN": "1",
        "BISECT_CONSUMER_HTTP_PORT": "0", "BISECT_ENGINE_COMMAND": "python3 -m fake --x 'a b'",
        "BISECT_DB_URL": "mysql://u@h/db", "BISECT_WORK_DIR": "/tmp/w"})
    assert (s.producer_url, s.token, s.consumer_id, s.slots) == ("http://p:9000", "t0k", "c-1", 5)
    assert s.poll_max_s == 1.5 and s.grace_s == 2 and s.drain and s.http_port == 0
    assert s.timeout_action is TimeoutAction.RETRY
    assert s.engine_command == ("python3", "-m", "fake", "--x", "a b")
    assert s.db_url.database == "db" and s.work_dir == "/tmp/w"
    assert "t0k" not in repr(s)


@pytest.mark.parametrize(("name", "value"), [
    ("BISECT_CONSUMER_SLOTS", "0"), ("BISECT_CONSUMER_SLOTS", "two"),
    ("BISECT_PRODUCER_URL", "ftp://x"), ("BISECT_PRODUCER_URL", "nohost"),
    ("BISECT_TIMEOUT_ACTION", "explode"), ("BISECT_GRACE_S", "-1"),
    ("BISECT_CONSUMER_HTTP_PORT", "70000"), ("BISECT_POLL_MAX_S", "0.001"),
    ("BISECT_CONSUMER_ID", "has space"), ("BISECT_DRAIN", "maybe"),
    ("BISECT_TASK_TIMEOUT_S", "soon"), ("BISECT_ENGINE_COMMAND", "'unclosed"),
    ("BISECT_DB_URL", "postgres://h/db"), ("BISECT_TESTERS", "{not json"),
    ("BISECT_TESTERS_FILE", "/nonexistent/testers.json"),
])
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        ConsumerSettings.from_env({name: value})


def test_poll_max_below_min() -> None:
    with pytest.raises(ConfigError, match="BISECT_POLL_MAX_S"):
        ConsumerSettings.from_env({"BISECT_POLL_MIN_S": "2", "BISECT_POLL_MAX_S": "1"})


def test_profiles_from_file_and_inline(tmp_path: Path) -> None:
    path = tmp_path / "testers.json"
    path.write_text(json.dumps({
        "demo": {"kind": "command", "command": ["make", "test"], "timeout": 60, "slots": 3,
                 "run_budget": 2000, "reproduce_runs": 40},
        "shell": {"command": "make check", "errid_regex": r"ERR: (\S+)", "workdir": "src"},
    }))
    inline = json.dumps({"shell": {"command": ["./t.sh"]}})
    profiles = load_profiles(inline=inline, path=str(path))
    assert sorted(profiles) == ["compass", "demo", "shell"]
    assert profiles["demo"].slots == 3
    assert profiles["demo"].run_budget == 2000
    assert profiles["shell"].run_budget is None
    assert (profiles["demo"].reproduce_runs, profiles["shell"].reproduce_runs) == (40, None)
    assert profiles["demo"].tester_spec() == {"kind": "command", "name": "demo",
                                              "command": ["make", "test"], "timeout": 60}
    assert profiles["shell"].options["command"] == ["./t.sh"]  # inline wins
    assert profiles["compass"].tester_spec() == {"kind": "compass", "name": "compass"}


@pytest.mark.parametrize("profile", [
    {"kind": "docker"}, {"kind": "command"}, {"command": []}, {"command": "  "},
    {"command": [1, 2]}, {"command": ["x"], "timeout": -1}, {"command": ["x"], "timeout": True},
    {"command": ["x"], "errid_regex": "("}, {"command": ["x"], "errid_regex": "(a)(b)"},
    {"command": ["x"], "slots": 0}, {"command": ["x"], "env": {"A": 1}},
    {"command": ["x"], "run_budget": 0}, {"command": ["x"], "run_budget": "800"},
    {"command": ["x"], "run_budget": True}, {"command": ["x"], "reproduce_runs": 0},
    {"command": ["x"], "reproduce_runs": 501}, {"command": ["x"], "reproduce_runs": "40"},
    {"command": ["x"], "workdir": 3}, "not an object",
])
def test_bad_profiles_name_the_variable_and_tester(profile: object) -> None:
    with pytest.raises(ConfigError, match=r"BISECT_TESTERS: tester 'p'"):
        load_profiles(inline=json.dumps({"p": profile}), path=None)


def test_bad_profile_name() -> None:
    with pytest.raises(ConfigError, match="BISECT_TESTERS: tester name"):
        load_profiles(inline=json.dumps({"has space": {"command": "x"}}), path=None)
    with pytest.raises(ConfigError, match="BISECT_TESTERS"):
        load_profiles(inline="[]", path=None)


def test_fingerprint_ignores_name_and_timeout() -> None:
    a = {"kind": "command", "name": "a", "command": ["x"], "timeout": 5}
    b = {"kind": "command", "name": "b", "command": ["x"], "timeout": 50}
    c = {"kind": "command", "name": "a", "command": ["y"]}
    fp = profiles_module.tester_fingerprint
    assert fp(a) == fp(b) != fp(c)


def test_fingerprint_has_one_home_the_engine() -> None:
    from consumer.engine import testers

    profile = {"kind": "compass", "name": "a", "my_account": "x", "my_token": "t"}
    assert profiles_module.tester_fingerprint(profile) == testers.tester_fingerprint(profile)
    # The compass account travels in the spec now: it must not change which verdicts match.
    assert profiles_module.tester_fingerprint(profile) == profiles_module.tester_fingerprint(
        {"kind": "compass", "name": "a"})


def test_main_exits_2_on_config_error() -> None:
    proc = subprocess.run([sys.executable, "-m", "consumer.main"], capture_output=True,
                          text=True, timeout=60, check=False,
                          env={"BISECT_CONSUMER_SLOTS": "-3", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    assert "BISECT_CONSUMER_SLOTS" in proc.stderr


def test_main_help_lists_env() -> None:
    proc = subprocess.run([sys.executable, "-m", "consumer.main", "--help"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0
    assert "--drain" in proc.stdout and "BISECT_CONSUMER_SLOTS" in proc.stdout


def test_remove_empty_task_dirs(tmp_path: Path) -> None:
    from consumer.worker import remove_empty_task_dirs

    (tmp_path / "1-1").mkdir()
    (tmp_path / "2-1" / "bisect-x").mkdir(parents=True)
    (tmp_path / "note").write_text("x")
    assert remove_empty_task_dirs(str(tmp_path)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2-1", "note"]
    assert remove_empty_task_dirs(str(tmp_path / "missing")) == 0


@pytest.mark.parametrize("name", ["BISECT_CONSUMER_TOKEN", "BISECT_COMPASS_TOKEN"])
def test_placeholder_tokens_from_env_example_are_refused(name: str) -> None:
    example = (Path(__file__).resolve().parents[3] / ".env.example").read_text()
    placeholder = next((line.split("=", 1)[1] for line in example.splitlines()
                        if line.startswith(f"{name}=")), "") or "change-me-token"
    with pytest.raises(ConfigError, match=f"{name}: still the placeholder"):
        ConsumerSettings.from_env({name: placeholder})


def test_sandbox_settings() -> None:
    import os

    s = ConsumerSettings.from_env({})
    assert s.sandbox.value == ("user" if os.geteuid() == 0 else "none")
    with pytest.raises(ConfigError, match="BISECT_SANDBOX: expected one of"):
        ConsumerSettings.from_env({"BISECT_SANDBOX": "jail"})
    with pytest.raises(ConfigError, match="BISECT_SANDBOX_PASS_ENV"):
        ConsumerSettings.from_env({"BISECT_SANDBOX_PASS_ENV": "BISECT_CONSUMER_TOKEN"})
    with pytest.raises(ConfigError, match="BISECT_CACHE_MAX_GB"):
        ConsumerSettings.from_env({"BISECT_CACHE_MAX_GB": "0"})
    assert ConsumerSettings.from_env({"BISECT_CACHE_MAX_GB": "20"}).cache_max_gb == 20


def test_secrets_are_not_in_the_settings_repr() -> None:
    s = ConsumerSettings.from_env({
        "BISECT_CONSUMER_TOKEN": "tok-Zq9xx", "BISECT_COMPASS_TOKEN": "ctok-Zq9xx",
        "BISECT_DB_URL": "mysql://u:pw-Zq9xx@db:3306/bisect"})
    assert s.compass_token == "ctok-Zq9xx"
    from consumer.main import describe_settings

    assert "Zq9xx" not in describe_settings(s)
