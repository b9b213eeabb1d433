"""common.urls: the repository URL check that replaced a string-prefix allow-list.

Each rejected spelling below was accepted (and fetched) by the old ``startswith`` check.
"""

from __future__ import annotations

import pytest

from common.errors import ConfigError, ValidationError
from common.urls import (
    cache_identity,
    canonical_repo_url,
    check_repo_url,
    parse_allow_list,
    redact_text,
    redact_url,
)

ALLOW = ("https://allowed.host/group/", "/srv/git/", "http://127.0.0.1:8999/")


@pytest.mark.parametrize("url", [
    "/srv/git/../evil/x.git",                       # '..' out of the listed folder
    "file:///srv/git/../evil",                      # the same as a file:// URL
    "file:///srv/git/%2e%2e/evil",                  # ... percent-encoded
    "https://allowed.host@127.0.0.1:9/group/x",     # userinfo: the real host is 127.0.0.1
    "https://user:secret@allowed.host/group/x",     # a password in the URL
    "https://allowed.host.evil.net/group/x",        # a longer host with the same prefix
    "https://allowed.host/groupie/x",               # a path prefix not on a segment
    "https://allowed.host:8443/group/x",            # another port
    "http://allowed.host/group/x",                  # another scheme
    "https://allowed.host/group/x\nHost: y",        # control characters
    "https://allowed.host/group/x\x00",
    "/etc/passwd-repo",                             # a local path that is not listed
    "file:///home/user/repo",
    "ext::sh -c touch% /tmp/pwned",                 # git's ext:: transport
    "-uhelp",                                       # an option to git clone
    "https://allowed.host/group/x?a=b",
    "relative/path",
])
def test_rejected(url: str) -> None:
    with pytest.raises(ValidationError) as caught:
        check_repo_url(url, ALLOW)
    assert caught.value.field == "repo_url"
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize(("url", "canonical"), [
    ("https://allowed.host/group/x.git", "https://allowed.host/group/x.git"),
    ("HTTPS://Allowed.Host:443//group//x/", "https://allowed.host/group/x"),
    ("https://allowed.host/group", "https://allowed.host/group"),
    ("/srv/git/repo-1", "file:///srv/git/repo-1"),
    ("file:///srv/git//repo-1/", "file:///srv/git/repo-1"),
    ("http://127.0.0.1:8999/r.git", "http://127.0.0.1:8999/r.git"),
])
def test_allowed_and_canonical(url: str, canonical: str) -> None:
    assert check_repo_url(url, ALLOW) == canonical


def test_field_is_named() -> None:
    with pytest.raises(ValidationError) as caught:
        check_repo_url("https://x.org/a", ALLOW, field="job.upstream_repo")
    assert caught.value.field == "job.upstream_repo"
    with pytest.raises(ValidationError, match="BISECT_REPO_URL_ALLOW is empty"):
        check_repo_url("https://x.org/a", ())


def test_host_root_rule_and_ssh() -> None:
    rules = parse_allow_list(["https://github.com", "ssh://git@gitee.com/mirrors/"])
    assert check_repo_url("https://github.com/a/b", rules) == "https://github.com/a/b"
    assert check_repo_url("git@gitee.com:mirrors/linux.git", rules) == (
        "ssh://git@gitee.com/mirrors/linux.git")
    with pytest.raises(ValidationError):
        check_repo_url("ssh://git:pw@gitee.com/mirrors/x", rules)


def test_bad_allow_entry_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="BISECT_REPO_URL_ALLOW"):
        parse_allow_list(["ftp://x/"])


def test_every_spelling_gets_one_cache_identity(tmp_path: object) -> None:
    spellings = ["https://github.com/a/b", "https://GitHub.com/a/b.git",
                 "https://github.com:443/a//b/", "HTTPS://github.com/a/b.git/"]
    assert len({cache_identity(s) for s in spellings}) == 1
    assert canonical_repo_url("git@github.com:a/b.git") == "ssh://git@github.com/a/b.git"


def test_redaction() -> None:
    assert redact_url("https://u:pw@host.example/a/b?token=x") == "https://host.example/a/b"
    text = "fatal: unable to access 'https://u:pw@10.0.0.5:8080/r.git/': Connection refused"
    assert "pw" not in redact_text(text) and "https://10.0.0.5:8080/r.git/" in redact_text(text)
