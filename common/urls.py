"""Repository URLs: parse, normalise, check against an allow-list, redact.

A repository URL comes from people (API submits) and from compass-ci jobs; git fetches it
from the consumer's network. So a URL is parsed once into its parts, and the allow-list is
matched on those parts (scheme, exact host and port, a path prefix that ends on a segment
boundary), never as a string prefix: ``https://allowed.host.evil.net/`` and
``http://allowed.host@127.0.0.1/`` do not pass ``https://allowed.host/``.

The canonical form (lower-case scheme and host, default port dropped, one slash between
segments, no trailing slash) is what is stored and fetched; :func:`cache_identity` further
drops a trailing ``.git`` so that every spelling of a repository shares one mirror.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from common.errors import ConfigError, ValidationError

REMOTE_SCHEMES = frozenset({"https", "http", "ssh", "git"})
LOCAL_SCHEME = "file"
DEFAULT_PORTS = {"http": 80, "https": 443, "ssh": 22, "git": 9418}
MAX_URL_CHARS = 2048
# ``user@host:path`` (scp-like ssh), as git reads it: no slash before the colon.
_SCP_LIKE = re.compile(r"^(?P<user>[A-Za-z0-9._-]+)@(?P<host>[A-Za-z0-9.-]+):(?P<path>[^/].*|/.*)$")
_HOST = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Characters kept as they are when a path is re-quoted.
_PATH_SAFE = "/-._~!$&'()*+,;=:@"
# A URL inside free text (a git error message), for redaction.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


@dataclass(frozen=True)
class RepoUrl:
    """A parsed repository URL. ``host`` is empty and ``path`` absolute for ``file``."""

    scheme: str
    host: str
    port: int | None  # None: the scheme's default
    path: str  # decoded, starts with "/", no trailing "/" (except the root itself)
    user: str = ""  # ssh only: the login name (never a password)

    @property
    def is_local(self) -> bool:
        return self.scheme == LOCAL_SCHEME

    @property
    def canonical(self) -> str:
        """The one spelling of this URL that is stored, fetched and shown."""
        if self.is_local:
            return f"file://{quote(self.path, safe=_PATH_SAFE)}"
        auth = f"{quote(self.user, safe='')}@" if self.user else ""
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.scheme}://{auth}{self.host}{port}{quote(self.path, safe=_PATH_SAFE)}"

    @property
    def git_argument(self) -> str:
        """What to hand ``git clone``: a local repository as a plain path."""
        return self.path if self.is_local else self.canonical


def _reject(field: str, reason: str) -> ValidationError:
    return ValidationError(field, reason)


def _clean_path(raw: str, field: str) -> str:
    """Decoded, checked, normalised path: absolute, single slashes, no trailing slash."""
    if re.search(r"%2f|%5c|%00", raw, re.IGNORECASE):
        raise _reject(field, "encoded '/', '\\' or NUL in the path")
    path = unquote(raw)
    if _CONTROL.search(path) or "\\" in path:
        raise _reject(field, "control characters or '\\' in the path")
    segments = [s for s in path.split("/") if s]
    if any(s in (".", "..") for s in segments):
        raise _reject(field, "'.' or '..' segments are not allowed")
    return "/" + "/".join(segments)


def parse_repo_url(url: str, field: str = "repo_url") -> RepoUrl:
    """Parse and normalise ``url``; :class:`ValidationError` naming ``field`` when it is not
    a repository URL this project fetches (userinfo with a password, ``..``, control
    characters, an unknown scheme, no host)."""
    if not isinstance(url, str) or not url.strip():
        raise _reject(field, "must be a non-empty string")
    if len(url) > MAX_URL_CHARS:
        raise _reject(field, f"longer than {MAX_URL_CHARS} characters")
    if _CONTROL.search(url):
        raise _reject(field, "control characters are not allowed")
    text = url.strip()
    if text.startswith("-"):
        raise _reject(field, "must not start with '-'")
    if "://" not in text:
        scp = _SCP_LIKE.match(text)
        if scp is not None:
            text = f"ssh://{scp['user']}@{scp['host']}/{scp['path'].lstrip('/')}"
        elif text.startswith("/"):
            return RepoUrl(LOCAL_SCHEME, "", None, _clean_path(text, field))
        else:
            raise _reject(field, "must be an absolute URL (https://host/path) or an "
                                 "absolute local path")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise _reject(field, f"not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme == LOCAL_SCHEME:
        if parts.netloc not in ("", "localhost"):
            raise _reject(field, "file:// URLs must not name a host")
        if parts.query or parts.fragment:
            raise _reject(field, "file:// URLs take no query or fragment")
        return RepoUrl(LOCAL_SCHEME, "", None, _clean_path(parts.path, field))
    if scheme not in REMOTE_SCHEMES:
        raise _reject(field, f"scheme must be one of {sorted(REMOTE_SCHEMES | {LOCAL_SCHEME})}, "
                             f"got {scheme!r}")
    if parts.password is not None or (parts.username is not None and scheme != "ssh"):
        raise _reject(field, "credentials (user@ or user:password@) are not allowed in the URL")
    if parts.query or parts.fragment:
        raise _reject(field, "a query or fragment is not allowed")
    host = (parts.hostname or "").lower()
    if not host:
        raise _reject(field, "the URL names no host")
    if not _HOST.match(host) and not _is_ip_literal(parts.netloc, host):
        raise _reject(field, f"not a valid host name: {host!r}")
    user = unquote(parts.username or "")
    if user and not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", user):
        raise _reject(field, "the ssh login name must be letters, digits or '._-'")
    if port == DEFAULT_PORTS.get(scheme):
        port = None
    path = _clean_path(parts.path, field)
    if path == "/":
        raise _reject(field, "the URL names no repository path")
    return RepoUrl(scheme, host, port, path, user)


def _is_ip_literal(netloc: str, host: str) -> bool:
    if "[" in netloc:  # IPv6
        return bool(re.fullmatch(r"[0-9a-f:.]+", host))
    return bool(re.fullmatch(r"[0-9.]+", host))


@dataclass(frozen=True)
class AllowRule:
    """One allow-list entry: this scheme, exactly this host and port, paths at or under
    ``path`` (whole segments)."""

    scheme: str
    host: str
    port: int | None
    path: str  # "/" allows every path of the host

    def allows(self, url: RepoUrl) -> bool:
        if (url.scheme, url.host, url.port) != (self.scheme, self.host, self.port):
            return False
        return self.path == "/" or url.path == self.path or url.path.startswith(self.path + "/")

    def __str__(self) -> str:
        if self.scheme == LOCAL_SCHEME:
            return f"file://{self.path}"
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.scheme}://{self.host}{port}{self.path}"


@functools.lru_cache(maxsize=1024)
def parse_allow_rule(entry: str, variable: str = "BISECT_REPO_URL_ALLOW") -> AllowRule:
    """``https://host[:port][/path/]``, ``ssh://host/path``, ``file:///dir`` or ``/dir``.

    Cached: every submitted URL is checked against the configured entries, and parsing
    them again for each item was a fifth of a batch submit's validation."""
    text = entry.strip()
    try:
        if text.startswith("/") or text.lower().startswith("file:"):
            parsed = parse_repo_url(text, variable)
        else:
            parts = urlsplit(text)
            # The host root is a valid rule though not a valid repository.
            probe = text if parts.path.strip("/") else text.rstrip("/") + "/x"
            parsed = parse_repo_url(probe, variable)
            if not parts.path.strip("/"):
                parsed = RepoUrl(parsed.scheme, parsed.host, parsed.port, "/")
    except ValidationError as exc:
        raise ConfigError(f"{variable}: entry {entry!r}: {exc.reason}") from None
    return AllowRule(parsed.scheme, parsed.host, parsed.port, parsed.path)


def parse_allow_list(entries: Iterable[str], variable: str = "BISECT_REPO_URL_ALLOW"
                     ) -> tuple[AllowRule, ...]:
    """Every entry parsed; :class:`ConfigError` naming ``variable`` on a bad one."""
    return tuple(parse_allow_rule(e, variable) for e in entries if e.strip())


def check_repo_url(url: str, allow: Sequence[str | AllowRule], field: str = "repo_url") -> str:
    """The canonical form of ``url`` when the allow-list accepts it.

    Raises :class:`ValidationError` naming ``field``: the URL is malformed, or no rule
    allows it (local paths and ``file://`` only pass a rule that lists them). ``allow`` may
    hold entries as configured (strings) or parsed rules.
    """
    parsed = parse_repo_url(url, field)
    rules = [r if isinstance(r, AllowRule) else parse_allow_rule(r) for r in allow]
    if not rules:
        raise _reject(field, "not accepted: no repository URLs are allowed here "
                             "(BISECT_REPO_URL_ALLOW is empty)")
    if not any(rule.allows(parsed) for rule in rules):
        shown = ", ".join(str(r) for r in rules)
        raise _reject(field, f"{redact_url(url)} is not under an allowed location ({shown})")
    return parsed.canonical


def canonical_repo_url(url: str, field: str = "repo_url") -> str:
    """The canonical spelling of ``url`` (no allow-list)."""
    return parse_repo_url(url, field).canonical


def cache_identity(url: str) -> str:
    """What names a repository's mirror: the canonical URL without a trailing ``.git``.

    A relative local path (``bisect-run --repo .``) is made absolute against the current
    directory, resolving symlinks, so one repository gets one mirror however it is named.
    """
    text = url.strip()
    if "://" not in text and not _SCP_LIKE.match(text):
        text = os.path.realpath(os.path.expanduser(text))
    try:
        canonical = parse_repo_url(text).canonical
    except ValidationError:
        return text  # not ours to judge here: git will say what is wrong with it
    return canonical[:-4] if canonical.endswith(".git") else canonical


def redact_url(url: str) -> str:
    """``url`` for a log line or an error: no userinfo, query or fragment."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return "<invalid URL>"
    if not parts.scheme or not parts.netloc:
        return _CONTROL.sub("?", url)[:MAX_URL_CHARS]
    host = parts.netloc.rsplit("@", 1)[-1]
    return _CONTROL.sub("?", f"{parts.scheme}://{host}{parts.path}")[:MAX_URL_CHARS]


def redact_text(text: str) -> str:
    """Every URL inside ``text`` redacted (git quotes the URL it failed on)."""
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)
