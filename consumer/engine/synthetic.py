"""Synthetic git repositories with a known regression, for tests, demos and benchmarks.

Commit ``i`` (creation order, a topological order) writes ``state.txt``: ``bad`` when the
culprit ``bad_index`` is among its ancestors-or-self, ``good`` otherwise, and ``skip`` or
``other`` inside ``skip_range`` / ``other_range``. ``check.sh`` (in every commit) reads it:
bad prints ``ERRID: <error_id>`` and exits 1, other prints ``ERRID: E_OTHER`` and exits 1,
skip exits 125, good exits 0. ``SYNTH_SLEEP`` makes it sleep first and ``SYNTH_COUNT_FILE``
gets one line per run (to count runs of any bisection tool). Built with ``git fast-import``,
so a thousand commits take well under a second.

A *flaky* repository (``flaky_p``) has a ``check.sh`` that shows the error on a bad commit
only with probability ``flaky_p`` (else it passes), and an unrelated error (``E_OTHER``,
exit 1) on a fraction ``other_rate`` of all runs. Its random numbers come from ``awk``
seeded with ``SYNTH_SEED`` and the run number (the line count of ``SYNTH_COUNT_FILE``), so
a sequence of runs is reproducible, and any tool (``git bisect run`` too) sees the same
behaviour through the same script; without ``SYNTH_SEED`` they come from /dev/urandom.
"""

from __future__ import annotations

import random
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ERROR_ID = "E_SYNTH"
OTHER_ERROR_ID = "E_OTHER"
_EPOCH = 1_700_000_000

CHECK_SH = """#!/bin/sh
# Synthetic regression test: state.txt says what this commit is.
if [ -n "$SYNTH_COUNT_FILE" ]; then echo run >> "$SYNTH_COUNT_FILE"; fi
if [ -n "$SYNTH_SLEEP" ]; then sleep "$SYNTH_SLEEP"; fi
state=$(cat state.txt 2>/dev/null)
case "$state" in
  bad) echo "ERRID: {error_id}"; exit 1 ;;
  other) echo "ERRID: {other_id}"; exit 1 ;;
  skip) echo "cannot build this commit"; exit 125 ;;
  *) echo "ok"; exit 0 ;;
esac
"""

FLAKY_CHECK_SH = """#!/bin/sh
# Synthetic flaky regression test: bad commits show the error with probability {p}, and an
# unrelated error shows on a fraction {other} of all runs.
n=0
if [ -n "$SYNTH_COUNT_FILE" ]; then
  echo run >> "$SYNTH_COUNT_FILE"; n=$(wc -l < "$SYNTH_COUNT_FILE")
fi
if [ -n "$SYNTH_SLEEP" ]; then sleep "$SYNTH_SLEEP"; fi
if [ -n "$SYNTH_SEED" ]; then seed=$((SYNTH_SEED * 100003 + n));
else seed=$(od -An -N4 -tu4 /dev/urandom | tr -d ' '); fi
set -- $(awk -v s="$seed" 'BEGIN {{ srand(s); print rand(), rand() }}')
other=$(awk -v u="$1" 'BEGIN {{ print (u < {other}) ? 1 : 0 }}')
shows=$(awk -v u="$2" 'BEGIN {{ print (u < {p}) ? 1 : 0 }}')
state=$(cat state.txt 2>/dev/null)
if [ "$other" = 1 ]; then echo "ERRID: {other_id}"; exit 1; fi
case "$state" in
  bad) if [ "$shows" = 1 ]; then echo "ERRID: {error_id}"; exit 1; fi; echo "ok"; exit 0 ;;
  skip) echo "cannot build this commit"; exit 125 ;;
  *) echo "ok"; exit 0 ;;
esac
"""


@dataclass(frozen=True)
class SyntheticRepo:
    path: Path
    shas: tuple[str, ...]  # by creation index
    parents: tuple[tuple[int, ...], ...]
    states: tuple[str, ...]
    bad_index: int
    error_id: str

    @property
    def head(self) -> str:
        return self.shas[-1]

    @property
    def root(self) -> str:
        return self.shas[0]

    @property
    def culprit(self) -> str:
        return self.shas[self.bad_index]

    def index(self, sha: str) -> int:
        return self.shas.index(sha)


def plan_history(n_commits: int, merges: int = 0, seed: int = 0) -> tuple[tuple[int, ...], ...]:
    """Parents (by index) of ``n_commits`` commits with ``merges`` side branches merged back.

    Branches fork from the mainline at evenly spread points, get 1-6 commits interleaved
    with mainline work and are merged by a merge commit on the mainline; the last commit is
    on the mainline and every commit is its ancestor.
    """
    if n_commits < 1:
        raise ValueError("n_commits must be >= 1")
    rng = random.Random(seed)
    forks = {1 + (k * max(n_commits - 3, 1)) // max(merges, 1) for k in range(merges)}
    parents: list[tuple[int, ...]] = [()]
    main_tip = 0
    open_branches: list[list[int]] = []  # [tip, commits so far, target length]
    for i in range(1, n_commits):
        left = n_commits - i  # commits still to create, this one included
        ready = [b for b in open_branches if b[1] >= b[2]]
        forced = bool(open_branches) and left <= len(open_branches)
        if not forced and i in forks and left > len(open_branches) + 2:
            open_branches.append([i, 1, rng.randint(1, 6)])
            parents.append((main_tip,))
        elif open_branches and (forced or (ready and rng.random() < 0.5)):
            branch = ready[0] if ready else open_branches[0]
            open_branches.remove(branch)
            parents.append((main_tip, branch[0]))
            main_tip = i
        elif open_branches and left > len(open_branches) + 1 and rng.random() < 0.5:
            branch = rng.choice(open_branches)
            parents.append((branch[0],))
            branch[0] = i
            branch[1] += 1
        else:
            parents.append((main_tip,))
            main_tip = i
    return tuple(parents)


def make_repo(
    path: Path,
    n_commits: int,
    bad_index: int,
    *,
    merges: int = 0,
    skip_range: Sequence[int] | range = (),
    other_range: Sequence[int] | range = (),
    error_id: str = DEFAULT_ERROR_ID,
    seed: int = 0,
    flaky_p: float | None = None,
    other_rate: float = 0.0,
) -> SyntheticRepo:
    """Create a non-bare repository at ``path`` (``main`` checked out at the last commit).

    ``flaky_p``: the test shows the error on a bad commit with this probability only, and
    an unrelated error on a fraction ``other_rate`` of all runs (see the module docstring).
    """
    if not 0 <= bad_index < n_commits:
        raise ValueError("bad_index must be a commit index")
    parents = plan_history(n_commits, merges, seed)
    states = _states(parents, bad_index, set(skip_range), set(other_range))
    path.mkdir(parents=True, exist_ok=True)
    _git(path, "init", "--quiet", "--initial-branch=main")
    marks = path / ".git" / "synthetic-marks"
    if flaky_p is None:
        check = CHECK_SH.format(error_id=error_id, other_id=OTHER_ERROR_ID)
    else:
        check = FLAKY_CHECK_SH.format(error_id=error_id, other_id=OTHER_ERROR_ID,
                                      p=float(flaky_p), other=float(other_rate))
    stream = _fast_import_stream(parents, states, check.encode())
    _git(path, "fast-import", "--quiet", f"--export-marks={marks}", stdin=stream)
    by_mark = dict(line.split() for line in marks.read_text().splitlines())
    marks.unlink()
    shas = tuple(by_mark[f":{i + 1}"] for i in range(n_commits))
    _git(path, "reset", "--hard", "--quiet", "main")
    return SyntheticRepo(path, shas, parents, tuple(states), bad_index, error_id)


def _states(
    parents: Sequence[tuple[int, ...]], bad_index: int, skip: set[int], other: set[int]
) -> list[str]:
    ancestors: list[int] = []
    for i, ps in enumerate(parents):
        bits = 1 << i
        for p in ps:
            bits |= ancestors[p]
        ancestors.append(bits)
    states = []
    for i in range(len(parents)):
        if i in skip:
            states.append("skip")
        elif i in other:
            states.append("other")
        else:
            states.append("bad" if ancestors[i] >> bad_index & 1 else "good")
    return states


def _fast_import_stream(
    parents: Sequence[tuple[int, ...]], states: Sequence[str], check: bytes
) -> bytes:
    out: list[bytes] = []
    for i, ps in enumerate(parents):
        stamp = f"{_EPOCH + 60 * i} +0000"
        message = f"synthetic commit {i} ({states[i]})\n".encode()
        out.append(b"commit refs/heads/main\n")
        out.append(f"mark :{i + 1}\n".encode())
        out.append(f"author Synthetic Author <author@example.com> {stamp}\n".encode())
        out.append(f"committer Synthetic Committer <committer@example.com> {stamp}\n".encode())
        out.append(f"data {len(message)}\n".encode() + message)
        if ps:
            out.append(f"from :{ps[0] + 1}\n".encode())
        for p in ps[1:]:
            out.append(f"merge :{p + 1}\n".encode())
        if i == 0:
            out.append(f"M 755 inline check.sh\ndata {len(check)}\n".encode() + check + b"\n")
        state = f"{states[i]}\n".encode()
        out.append(f"M 644 inline state.txt\ndata {len(state)}\n".encode() + state + b"\n")
        out.append(b"\n")
    out.append(f"reset refs/heads/main\nfrom :{len(parents)}\n\n".encode())
    return b"".join(out)


def _git(path: Path, *args: str, stdin: bytes | None = None) -> str:
    done = subprocess.run(
        ["git", "-C", str(path), *args],
        input=stdin,
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"git {args[0]} failed: {done.stderr.decode(errors='replace')}")
    return done.stdout.decode()
