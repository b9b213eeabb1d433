"""The consumer's settings: one frozen dataclass, read once from ``BISECT_*`` variables.

Every bad value raises :class:`ConfigError` naming the variable; ``bisect-consumer`` turns
that into a message and exit code 2.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import socket
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import urlsplit

from common.errors import ConfigError, ValidationError
from common.settings import DbUrl, Env
from consumer.engine.sandbox import DEFAULT_USER as DEFAULT_SANDBOX_USER
from consumer.engine.sandbox import Sandbox, SandboxMode
from consumer.profiles import TesterProfile, load_profiles

DEFAULT_PRODUCER_URL = "http://127.0.0.1:8080"
DEFAULT_SLOTS = 2
DEFAULT_POLL_MIN_S = 0.2
DEFAULT_POLL_MAX_S = 5.0
DEFAULT_TASK_TIMEOUT_S = 4 * 3600
DEFAULT_GRACE_S = 30.0
DEFAULT_KILL_GRACE_S = 5.0
DEFAULT_HTTP_PORT = 9400  # 0 turns the health/metrics port off
DEFAULT_HTTP_HOST = "0.0.0.0"
DEFAULT_PRODUCER_TIMEOUT_S = 10.0
DEFAULT_FINISH_RETRY_S = 300.0
DEFAULT_LEASE_S = 30.0  # until the producer's first answer says otherwise
# --stop-on-eof: the engine stops when this consumer's end of its stdin closes (it dies).
DEFAULT_ENGINE_COMMAND = (sys.executable, "-m", "consumer.engine", "--spec", "-",
                          "--stop-on-eof")
DEFAULT_SANDBOX = SandboxMode.AUTO  # tests as BISECT_SANDBOX_USER when root
# The values .env.example ships with: a deployment that kept them has no secret at all.
PLACEHOLDER_PREFIX = "change-me"
_CONSUMER_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
_BASE_DIR = os.path.join(tempfile.gettempdir(), "bisect-task")


class TimeoutAction(StrEnum):
    FAIL = "fail"      # the task fails with reason "timeout"
    RETRY = "retry"    # the task is released back to the queue


def default_consumer_id() -> str:
    host = re.sub(r"[^A-Za-z0-9_.:\-]", "-", socket.gethostname().split(".")[0])[:80]
    return f"{host or 'consumer'}-{os.getpid()}-{secrets.token_hex(2)}"


@dataclass(frozen=True)
class ConsumerSettings:
    db_url: DbUrl
    producer_url: str = DEFAULT_PRODUCER_URL
    token: str = field(default="", repr=False)
    consumer_id: str = field(default_factory=default_consumer_id)
    slots: int = DEFAULT_SLOTS
    poll_min_s: float = DEFAULT_POLL_MIN_S
    poll_max_s: float = DEFAULT_POLL_MAX_S
    cache_dir: str = os.path.join(_BASE_DIR, "cache")
    work_dir: str = os.path.join(_BASE_DIR, "work")
    task_timeout_s: float = DEFAULT_TASK_TIMEOUT_S
    timeout_action: TimeoutAction = TimeoutAction.FAIL
    grace_s: float = DEFAULT_GRACE_S
    kill_grace_s: float = DEFAULT_KILL_GRACE_S
    http_host: str = DEFAULT_HTTP_HOST
    http_port: int = DEFAULT_HTTP_PORT
    producer_timeout_s: float = DEFAULT_PRODUCER_TIMEOUT_S
    finish_retry_s: float = DEFAULT_FINISH_RETRY_S
    drain: bool = False
    engine_command: tuple[str, ...] = DEFAULT_ENGINE_COMMAND
    testers: Mapping[str, TesterProfile] = field(default_factory=dict)
    # compass-ci's scheduler, for the `compass` tester (empty: compass tasks cannot run here).
    scheduler_url: str = ""
    # The account compass jobs are submitted as; handed to the engine in the spec only.
    compass_account: str = field(default="", repr=False)
    compass_token: str = field(default="", repr=False)
    # compass-ci's scheduler requires my_email and my_name on every submit (§7.3).
    compass_email: str = field(default="", repr=False)
    compass_name: str = field(default="", repr=False)
    # How tests run (consumer/engine/sandbox.py); the engines get these through their env.
    sandbox: SandboxMode = DEFAULT_SANDBOX
    sandbox_user: str = DEFAULT_SANDBOX_USER
    cache_max_gb: float | None = None  # BISECT_CACHE_MAX_GB: least recently used evicted

    @property
    def tester_names(self) -> list[str]:
        return sorted(self.testers)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ConsumerSettings:
        env = Env(environ)
        producer_url = env.get_str("BISECT_PRODUCER_URL", DEFAULT_PRODUCER_URL).rstrip("/")
        parts = urlsplit(producer_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"BISECT_PRODUCER_URL: expected http(s)://host[:port], "
                              f"got {producer_url!r}")
        consumer_id = env.get_str("BISECT_CONSUMER_ID", "") or default_consumer_id()
        if not _CONSUMER_ID.match(consumer_id):
            raise ConfigError("BISECT_CONSUMER_ID: 1-128 letters, digits or '_.:-' "
                              f"(the producer checks this too), got {consumer_id!r}")
        poll_min = env.get_float("BISECT_POLL_MIN_S", DEFAULT_POLL_MIN_S, minimum=0.01,
                                 maximum=3600)
        poll_max = env.get_float("BISECT_POLL_MAX_S", DEFAULT_POLL_MAX_S, minimum=0.01,
                                 maximum=3600)
        if poll_max < poll_min:
            raise ConfigError(f"BISECT_POLL_MAX_S: must be at least BISECT_POLL_MIN_S "
                              f"({poll_min}), got {poll_max}")
        action = env.get_str("BISECT_TIMEOUT_ACTION", TimeoutAction.FAIL.value).lower()
        try:
            timeout_action = TimeoutAction(action)
        except ValueError:
            raise ConfigError(f"BISECT_TIMEOUT_ACTION: expected fail or retry, "
                              f"got {action!r}") from None
        engine_raw = env.raw("BISECT_ENGINE_COMMAND")
        engine_command: tuple[str, ...] = DEFAULT_ENGINE_COMMAND
        if engine_raw is not None:
            try:
                engine_command = tuple(shlex.split(engine_raw))
            except ValueError as exc:
                raise ConfigError(f"BISECT_ENGINE_COMMAND: {exc}") from None
            if not engine_command:
                raise ConfigError("BISECT_ENGINE_COMMAND: empty command")
        token = env.get_str("BISECT_CONSUMER_TOKEN", "")
        compass_token = env.get_str("BISECT_COMPASS_TOKEN", "")
        for name, value in (("BISECT_CONSUMER_TOKEN", token),
                            ("BISECT_COMPASS_TOKEN", compass_token)):
            if value.lower().startswith(PLACEHOLDER_PREFIX):
                raise ConfigError(f"{name}: still the placeholder from .env.example; "
                                  "generate one: python -c \"import secrets; "
                                  "print(secrets.token_hex(24))\"")
        sandbox = _sandbox(env)
        cache_max_gb = (env.get_float("BISECT_CACHE_MAX_GB", 0.0, minimum=0.001)
                        if env.raw("BISECT_CACHE_MAX_GB") is not None else None)
        scheduler_url = env.get_str("BISECT_SCHEDULER_URL", "").rstrip("/")
        if scheduler_url and urlsplit(scheduler_url).scheme not in ("http", "https"):
            raise ConfigError(f"BISECT_SCHEDULER_URL: expected http(s)://host[:port], "
                              f"got {scheduler_url!r}")
        return cls(
            scheduler_url=scheduler_url,
            compass_account=env.get_str("BISECT_COMPASS_ACCOUNT", ""),
            compass_token=compass_token,
            compass_email=env.get_str("BISECT_COMPASS_EMAIL", ""),
            compass_name=env.get_str("BISECT_COMPASS_NAME", ""),
            sandbox=sandbox.mode,  # resolved: auto became user or none
            sandbox_user=sandbox.user or env.get_str("BISECT_SANDBOX_USER",
                                                     DEFAULT_SANDBOX_USER),
            cache_max_gb=cache_max_gb,
            db_url=env.db_url(),
            producer_url=producer_url,
            token=token,
            consumer_id=consumer_id,
            slots=env.get_int("BISECT_CONSUMER_SLOTS", DEFAULT_SLOTS, minimum=1, maximum=256),
            poll_min_s=poll_min,
            poll_max_s=poll_max,
            cache_dir=os.path.abspath(env.get_str("BISECT_CACHE_DIR",
                                                  os.path.join(_BASE_DIR, "cache"))),
            work_dir=os.path.abspath(env.get_str("BISECT_WORK_DIR",
                                                 os.path.join(_BASE_DIR, "work"))),
            task_timeout_s=env.get_float("BISECT_TASK_TIMEOUT_S", DEFAULT_TASK_TIMEOUT_S,
                                         minimum=1),
            timeout_action=timeout_action,
            grace_s=env.get_float("BISECT_GRACE_S", DEFAULT_GRACE_S, minimum=0),
            kill_grace_s=env.get_float("BISECT_KILL_GRACE_S", DEFAULT_KILL_GRACE_S,
                                       minimum=0, maximum=600),
            http_host=env.get_str("BISECT_CONSUMER_HTTP_HOST", DEFAULT_HTTP_HOST),
            http_port=env.get_int("BISECT_CONSUMER_HTTP_PORT", DEFAULT_HTTP_PORT, minimum=0,
                                  maximum=65535),
            producer_timeout_s=env.get_float("BISECT_PRODUCER_TIMEOUT_S",
                                             DEFAULT_PRODUCER_TIMEOUT_S, minimum=0.1),
            finish_retry_s=env.get_float("BISECT_FINISH_RETRY_S", DEFAULT_FINISH_RETRY_S,
                                         minimum=0),
            drain=env.get_bool("BISECT_DRAIN", False),
            engine_command=engine_command,
            testers=load_profiles(inline=env.raw("BISECT_TESTERS"),
                                  path=env.raw("BISECT_TESTERS_FILE")),
        )


def _sandbox(env: Env) -> Sandbox:
    """The sandbox the consumer's engines will use, checked now so that a missing bwrap or
    user stops the consumer at start, not every task later."""
    wanted = {"BISECT_SANDBOX": env.get_str("BISECT_SANDBOX", DEFAULT_SANDBOX.value)}
    for name in ("BISECT_SANDBOX_USER", "BISECT_SANDBOX_PASS_ENV"):
        if env.raw(name) is not None:
            wanted[name] = env.get_str(name, "")
    try:
        return Sandbox.from_env(wanted)
    except ValidationError as exc:
        raise ConfigError(f"{exc.field}: {exc.reason}") from None
