"""The producer's settings: one frozen dataclass from ``BISECT_*`` variables."""

from __future__ import annotations

import json
import os
import re
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from common.compass_job import HEALTH_CODES
from common.errors import ConfigError
from common.settings import DbUrl, Env
from common.urls import parse_allow_list

DEFAULT_HOST = "0.0.0.0"
DEFAULT_PORT = 8080
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_LEASE_S = 30
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_SWEEP_INTERVAL_S = 5.0
DEFAULT_WRITER_HEARTBEAT_S = 2.0
DEFAULT_DISCOVERY_INTERVAL_S = 60.0
DEFAULT_DISCOVERY_PAGE = 1000
DEFAULT_DISCOVERY_BATCH = 500
DEFAULT_PENDING_HORIZON_S = 3 * 24 * 3600
DEFAULT_TESTER = "compass"
_TESTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# The HTTP edge and consumer identity (issue 15): see README "Settings".
DEFAULT_MAX_CLAIMS_PER_CONSUMER = 64
DEFAULT_MAX_LONG_POLLS = 200
DEFAULT_MAX_TASK_TIMEOUT_S = 24 * 3600
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 30.0
DEFAULT_KEEPALIVE_S = 75.0
# The tokens .env.example ships with: a producer never starts with them.
PLACEHOLDER_TOKENS = frozenset({"change-me-api-token", "change-me-consumer-token"})
# compass-ci's own discovery takes only jobs whose health is `abort` (compass-ci.md §3).
DEFAULT_DISCOVERY_HEALTH = ("abort",)
# compass-ci's routes: "token" (writes need an API token) or "open" (compass-ci's behaviour).
LEGACY_WRITE_MODES = ("token", "open")


@dataclass(frozen=True)
class ProducerSettings:
    db_url: DbUrl
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    api_tokens: frozenset[str] = frozenset()
    consumer_tokens: frozenset[str] = frozenset()
    open_reads: bool = True
    repo_url_allow: tuple[str, ...] = ()
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    lease_s: int = DEFAULT_LEASE_S
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    sweep_interval_s: float = DEFAULT_SWEEP_INTERVAL_S
    writer_heartbeat_s: float = DEFAULT_WRITER_HEARTBEAT_S
    default_tester: str = DEFAULT_TESTER
    discovery_enabled: bool = True
    discovery_interval_s: float = DEFAULT_DISCOVERY_INTERVAL_S
    discovery_page_size: int = DEFAULT_DISCOVERY_PAGE
    discovery_batch_size: int = DEFAULT_DISCOVERY_BATCH
    discovery_suites_include: tuple[str, ...] = ()
    discovery_suites_exclude: tuple[str, ...] = ()
    discovery_pending_horizon_s: int = DEFAULT_PENDING_HORIZON_S
    discovery_tester: str = DEFAULT_TESTER
    discovery_health: tuple[str, ...] = DEFAULT_DISCOVERY_HEALTH
    legacy_writes: str = "token"
    instance_id: str = ""
    # Tester names this deployment's consumers define (BISECT_TESTERS), beside the builtin
    # compass tester and the default and discovery testers (see ``testers``).
    known_testers: frozenset[str] = frozenset()
    max_claims_per_consumer: int = DEFAULT_MAX_CLAIMS_PER_CONSUMER
    max_long_polls: int = DEFAULT_MAX_LONG_POLLS
    max_task_timeout_s: int = DEFAULT_MAX_TASK_TIMEOUT_S
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    keepalive_s: float = DEFAULT_KEEPALIVE_S

    @property
    def testers(self) -> frozenset[str]:
        """Tester names a claim or a submission may name; any other is refused."""
        return self.known_testers | {DEFAULT_TESTER, self.default_tester, self.discovery_tester}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ProducerSettings:
        env = Env(environ)
        api_tokens = env.secrets("BISECT_API_TOKENS", "BISECT_API_TOKENS_FILE")
        consumer_tokens = env.secrets("BISECT_CONSUMER_TOKENS", "BISECT_CONSUMER_TOKENS_FILE")
        open_reads = env.get_bool("BISECT_OPEN_READS", True)
        for name, value in (("BISECT_API_TOKENS", api_tokens),
                            ("BISECT_CONSUMER_TOKENS", consumer_tokens)):
            if not value:
                raise ConfigError(f"{name} (or {name}_FILE): at least one token is required")
            if value & PLACEHOLDER_TOKENS:
                raise ConfigError(f"{name}: still the .env.example placeholder; generate a "
                                  "token (python -c \"import secrets; "
                                  "print(secrets.token_hex(24))\")")
        port = env.get_int("BISECT_PORT", DEFAULT_PORT, minimum=0, maximum=65535)
        host = env.get_str("BISECT_HOST", DEFAULT_HOST)
        default_tester = env.get_str("BISECT_DEFAULT_TESTER", DEFAULT_TESTER)
        instance = env.get_str("BISECT_INSTANCE_ID",
                               f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")
        return cls(
            db_url=env.db_url(),
            host=host,
            port=port,
            api_tokens=api_tokens,
            consumer_tokens=consumer_tokens,
            open_reads=open_reads,
            repo_url_allow=_allow_list(env.get_list("BISECT_REPO_URL_ALLOW")),
            max_body_bytes=env.get_int("BISECT_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES,
                                       minimum=1024),
            lease_s=env.get_int("BISECT_LEASE_SECONDS", DEFAULT_LEASE_S, minimum=1,
                                maximum=3600),
            max_attempts=env.get_int("BISECT_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS, minimum=1),
            sweep_interval_s=env.get_float("BISECT_SWEEP_INTERVAL_S", DEFAULT_SWEEP_INTERVAL_S,
                                           minimum=0.05),
            writer_heartbeat_s=env.get_float("BISECT_WRITER_HEARTBEAT_S",
                                             DEFAULT_WRITER_HEARTBEAT_S, minimum=0.1),
            default_tester=default_tester,
            discovery_enabled=env.get_bool("BISECT_DISCOVERY", True),
            discovery_interval_s=env.get_float("BISECT_DISCOVERY_INTERVAL_S",
                                               DEFAULT_DISCOVERY_INTERVAL_S, minimum=0.05),
            discovery_page_size=env.get_int("BISECT_DISCOVERY_PAGE_SIZE", DEFAULT_DISCOVERY_PAGE,
                                            minimum=1, maximum=1000),
            discovery_batch_size=env.get_int("BISECT_DISCOVERY_BATCH_SIZE",
                                             DEFAULT_DISCOVERY_BATCH, minimum=1, maximum=1000),
            discovery_suites_include=env.get_list("BISECT_DISCOVERY_SUITES"),
            discovery_suites_exclude=env.get_list("BISECT_DISCOVERY_EXCLUDE_SUITES"),
            discovery_pending_horizon_s=env.get_int("BISECT_DISCOVERY_PENDING_HORIZON_S",
                                                    DEFAULT_PENDING_HORIZON_S, minimum=0),
            discovery_tester=env.get_str("BISECT_DISCOVERY_TESTER", default_tester),
            discovery_health=_health_names(env.get_list("BISECT_DISCOVERY_HEALTH")
                                           or DEFAULT_DISCOVERY_HEALTH),
            legacy_writes=_legacy_writes(env.get_str("BISECT_LEGACY_WRITES", "token")),
            instance_id=instance,
            known_testers=_tester_names(env.raw("BISECT_TESTERS")),
            max_claims_per_consumer=env.get_int("BISECT_MAX_CLAIMS_PER_CONSUMER",
                                                DEFAULT_MAX_CLAIMS_PER_CONSUMER, minimum=1,
                                                maximum=1000),
            max_long_polls=env.get_int("BISECT_MAX_LONG_POLLS", DEFAULT_MAX_LONG_POLLS,
                                       minimum=0),
            max_task_timeout_s=env.get_int("BISECT_MAX_TASK_TIMEOUT_S",
                                           DEFAULT_MAX_TASK_TIMEOUT_S, minimum=1),
            header_timeout_s=env.get_float("BISECT_HEADER_TIMEOUT_S", DEFAULT_HEADER_TIMEOUT_S,
                                           minimum=0.1),
            body_timeout_s=env.get_float("BISECT_BODY_TIMEOUT_S", DEFAULT_BODY_TIMEOUT_S,
                                         minimum=0.1),
            keepalive_s=env.get_float("BISECT_KEEPALIVE_S", DEFAULT_KEEPALIVE_S, minimum=0.1),
        )


def _health_names(names: tuple[str, ...]) -> tuple[str, ...]:
    for name in names:
        if name not in HEALTH_CODES:
            raise ConfigError(f"BISECT_DISCOVERY_HEALTH: {name!r} is not a compass-ci job health "
                              f"(one of: {', '.join(sorted(HEALTH_CODES))})")
    return names


def _legacy_writes(mode: str) -> str:
    if mode not in LEGACY_WRITE_MODES:
        raise ConfigError(f"BISECT_LEGACY_WRITES: {mode!r} must be one of "
                          f"{', '.join(LEGACY_WRITE_MODES)}")
    return mode


def _allow_list(entries: tuple[str, ...]) -> tuple[str, ...]:
    """The entries as configured, each checked at start (ConfigError naming the variable),
    so a bad one never turns a submission into a 500."""
    parse_allow_list(entries)
    return entries


def _tester_names(value: str | None) -> frozenset[str]:
    """BISECT_TESTERS on the producer: tester names, comma-separated, or the consumers' JSON
    profiles object (its keys are taken), so one value can serve both services."""
    if value is None:
        return frozenset()
    if value.startswith("{"):
        try:
            profiles = json.loads(value)
        except ValueError as exc:
            raise ConfigError(f"BISECT_TESTERS: not a JSON object ({exc})") from None
        names = [str(name) for name in profiles] if isinstance(profiles, dict) else []
    else:
        names = [item.strip() for item in value.split(",") if item.strip()]
    for name in names:
        if not _TESTER_NAME.match(name):
            raise ConfigError(f"BISECT_TESTERS: {name!r} is not a tester name (letters, "
                              "digits, '_.-', at most 64)")
    return frozenset(names)
