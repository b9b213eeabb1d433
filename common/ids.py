"""Deterministic ids and hash keys.

A task's id is derived from its dedup key (bad_job_id, error_id), so the same pair always maps
to the same row id. Two different pairs may hash to the same 63-bit id (the chance is about
n^2 / 2^64: one in 10^7 at 10^6 tasks). The task-state writer, the only process that inserts
tasks, checks the stored pair byte for byte; on a mismatch it probes the next candidate id,
``task_id(pair, probe=1)``, and so on. Lookups follow the same probe sequence.

``*_key`` columns hold a hex digest of a string we must compare exactly: Manticore compares
strings case-insensitively, so exact filters go through these keys (and are rechecked in
Python).
"""

from __future__ import annotations

import hashlib

MAX_ID = (1 << 63) - 1
MAX_PROBES = 8
_SEPARATOR = "\x1f"  # unit separator: cannot appear in a job id, so joins are unambiguous


def stable_id(*parts: str) -> int:
    """A positive 63-bit integer determined by ``parts``."""
    digest = hashlib.sha256(_SEPARATOR.join(parts).encode("utf-8")).digest()
    value = int.from_bytes(digest[:8], "big") & MAX_ID
    return value or 1


def task_id(bad_job_id: str, error_id: str, probe: int = 0) -> int:
    if probe == 0:
        return stable_id("task", bad_job_id, error_id)
    return stable_id("task", bad_job_id, error_id, str(probe))


def text_key(*parts: str) -> str:
    """A 32-hex-digit digest used for exact-match filtering of arbitrary strings."""
    return hashlib.sha256(_SEPARATOR.join(parts).encode("utf-8")).hexdigest()[:32]


def group_key(error_id: str, git_url: str) -> str:
    """Tasks sharing an error id and a repository belong together (dashboard grouping)."""
    return text_key("group", error_id, git_url)[:16]


def verdict_scope_key(repo_url: str, tester_fingerprint: str, error_id: str) -> str:
    return text_key("verdict", repo_url, tester_fingerprint, error_id)


def verdict_id(repo_url: str, commit: str, tester_fingerprint: str, error_id: str) -> int:
    return stable_id("verdict", repo_url, commit, tester_fingerprint, error_id)


def step_id(task: int, attempt: int, seq: int) -> int:
    return stable_id("step", str(task), str(attempt), str(seq))


def regression_id(errid: str) -> int:
    return stable_id("regression", errid)


def state_id(name: str) -> int:
    return stable_id("state", name)
