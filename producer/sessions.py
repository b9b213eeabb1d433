"""Dashboard sign-in sessions, their CSRF tokens, and the sign-in rate limit.

The cookie holds a random session id, never the API token: the token stays in this process's
memory, so a leaked cookie dies with the session (or a producer restart), and the token is
checked against the configured tokens on every use. One producer serves the dashboard (the
writer is a singleton), so the sessions live in that process.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

SESSION_TTL_S = 7 * 24 * 3600
MAX_SESSIONS = 10_000
LOGIN_ATTEMPTS = 10  # per client address ...
LOGIN_WINDOW_S = 60.0  # ... in this many seconds
MAX_CLIENTS_TRACKED = 10_000


@dataclass(frozen=True)
class Session:
    token: str
    csrf: str
    expires: float


class SessionStore:
    """Session id -> (token, CSRF token); oldest dropped beyond ``MAX_SESSIONS``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def create(self, token: str) -> tuple[str, Session]:
        session_id = secrets.token_urlsafe(32)
        session = Session(token, secrets.token_urlsafe(24), self._clock() + SESSION_TTL_S)
        self._sessions[session_id] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if session.expires < self._clock():
            del self._sessions[session_id]
            return None
        return session

    def drop(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(session_id, None)


def csrf_ok(session: Session | None, submitted: str | None) -> bool:
    return bool(session and submitted
                and hmac.compare_digest(session.csrf.encode(), submitted.encode()))


class LoginLimiter:
    """At most ``LOGIN_ATTEMPTS`` sign-ins per client address in ``LOGIN_WINDOW_S``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 attempts: int = LOGIN_ATTEMPTS, window_s: float = LOGIN_WINDOW_S) -> None:
        self._clock = clock
        self._attempts = attempts
        self._window_s = window_s
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()

    def allow(self, client: str) -> float | None:
        """None when allowed (and counted); else the seconds to wait."""
        now = self._clock()
        times = self._seen.pop(client, deque())
        while times and times[0] <= now - self._window_s:
            times.popleft()
        self._seen[client] = times
        while len(self._seen) > MAX_CLIENTS_TRACKED:
            self._seen.popitem(last=False)
        if len(times) >= self._attempts:
            return times[0] + self._window_s - now
        times.append(now)
        return None


# The producer's one store (see the module docstring).
SESSIONS = SessionStore()
LOGIN_LIMITER = LoginLimiter()
