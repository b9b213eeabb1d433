"""The test sandbox: what a repository's test can see and touch.

Run as root (as CI does), the ``user`` and ``bwrap`` cases run the test as ``nobody`` for
real; elsewhere they are skipped. Folders are made under a world-traversable temporary
folder so that "cannot write" means the permission, not an unreachable path.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.errors import ValidationError
from consumer.engine import git, testers
from consumer.engine.command_tester import CommandProfile, CommandTester
from consumer.engine.sandbox import Sandbox, SandboxMode, parse_pass_env
from consumer.engine.synthetic import make_repo
from consumer.engine.verdicts import Verdict
from consumer.engine.worktree import WorktreePool

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="runs tests as another uid: root only")


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="bisect-sandbox-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _tester(command: list[str] | str, sandbox: Sandbox, **profile: object) -> CommandTester:
    context = testers.TesterContext(error_id=None)
    parsed = CommandProfile.from_mapping({"command": command, "kill_grace": 0.5, **profile})
    return CommandTester(parsed, context, sandbox)


def _bwrap_works() -> bool:
    if shutil.which("bwrap") is None:
        return False
    probe = ["bwrap", "--ro-bind", "/", "/", "--unshare-all", "--", "true"]
    if os.geteuid() == 0:
        probe = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", *probe]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


BWRAP = pytest.mark.skipif(not _bwrap_works(), reason="bubblewrap missing or not allowed here")


def test_environment_is_built_not_inherited(tmp_path: Path) -> None:
    base = {"PATH": "/usr/bin:/bin", "HOME": "/root", "LANG": "de_DE.UTF-8",
            "BISECT_CONSUMER_TOKEN": "tok", "BISECT_DB_URL": "mysql://u:pw@h/db",
            "AWS_SECRET_ACCESS_KEY": "x", "CI_MARKER": "m"}
    sandbox = Sandbox(SandboxMode.USER, uid=65534, gid=65534, pass_env=("CI_MARKER",))
    env = sandbox.environment(commit="c1", home=tmp_path, tmpdir=tmp_path / "tmp",
                              profile_env={"X": "1"}, base=base)
    assert env["PATH"] == "/usr/bin:/bin" and env["HOME"] == str(tmp_path)
    assert env["LANG"] == "de_DE.UTF-8" and env["TMPDIR"] == str(tmp_path / "tmp")
    assert env["X"] == "1" and env["BISECT_COMMIT"] == "c1" and env["CI_MARKER"] == "m"
    assert not {"BISECT_CONSUMER_TOKEN", "BISECT_DB_URL", "AWS_SECRET_ACCESS_KEY"} & set(env)
    assert "core.hooksPath" in env.values()


def test_secret_names_cannot_be_passed() -> None:
    for name in ("BISECT_CONSUMER_TOKEN", "DB_PASSWORD", "BISECT_DB_URL", "MY_API_KEY"):
        with pytest.raises(ValidationError) as caught:
            parse_pass_env(f"PATHX,{name}")
        assert caught.value.field == "BISECT_SANDBOX_PASS_ENV"


def test_settings_are_checked() -> None:
    with pytest.raises(ValidationError, match="BISECT_SANDBOX"):
        Sandbox.from_env({"BISECT_SANDBOX": "chroot"})
    developer = Sandbox.from_env({})  # bisect-run, like git bisect run
    assert developer.mode is SandboxMode.NONE and developer.inherit_env
    assert not Sandbox.from_env({"BISECT_SANDBOX": "none"}).inherit_env
    expected = SandboxMode.USER if os.geteuid() == 0 else SandboxMode.NONE
    assert Sandbox.from_env({"BISECT_SANDBOX": "auto"}).mode is expected
    if os.geteuid() == 0:
        with pytest.raises(ValidationError, match="BISECT_SANDBOX_USER"):
            Sandbox.from_env({"BISECT_SANDBOX": "user", "BISECT_SANDBOX_USER": "no-such-user"})


async def test_test_sees_no_secret_of_the_engine(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BISECT_COMPASS_TOKEN", "compass-Zq9")
    monkeypatch.setenv("BISECT_CONSUMER_TOKEN", "consumer-Zq9")
    tester = _tester("env > env.txt", Sandbox.from_env({"BISECT_SANDBOX": "none"}))
    outcome = await tester.test("c1", tmp_path)
    assert outcome.verdict is Verdict.GOOD, outcome.detail
    seen = (tmp_path / "env.txt").read_text()
    assert "BISECT_COMMIT=c1" in seen and "Zq9" not in seen


async def _mirror_and_worktree(root: Path) -> tuple[Path, WorktreePool]:
    repo = make_repo(root / "repo", 4, 2)
    cache = git.MirrorCache(root / "cache")
    mirror = await cache.ensure(str(repo.path))
    return mirror, WorktreePool(mirror, cache.lock_path(str(repo.path)), root / "work")


ATTACK = (
    'id -u > uid.txt; echo built > out.o; '
    'mirror=$(sed "s/^gitdir: //; s#/worktrees/.*##" .git); '
    'printf "#!/bin/sh\\ntouch %s/pwned\\n" "$PWD" > "$mirror/hooks/post-checkout" '
    '  && chmod +x "$mirror/hooks/post-checkout" && echo HOOK-WRITTEN; '
    'echo "[core] hooksPath=/tmp" >> "$mirror/config" && echo CONFIG-WRITTEN; '
    'cat /proc/1/environ > /dev/null 2>&1 && echo READ-PID1-ENV; '
    'touch "$HOME/ok" "$TMPDIR/ok" && echo SCRATCH-OK; exit 0'
)


@ROOT_ONLY
async def test_user_mode_test_owns_its_worktree_and_nothing_else(open_tmp: Path) -> None:
    mirror, pool = await _mirror_and_worktree(open_tmp)
    sandbox = Sandbox.from_env({"BISECT_SANDBOX": "user"})
    assert sandbox.uid == 65534 or sandbox.user == "nobody"
    tester = _tester(ATTACK, sandbox)
    async with pool:
        worktree = await pool.acquire()
        for commit in ("HEAD", "HEAD~1"):
            await pool.checkout(worktree, commit)
            outcome = await tester.test(commit, worktree.path)
            assert outcome.verdict is Verdict.GOOD, outcome.detail
            assert (worktree.path / "uid.txt").read_text().strip() == str(sandbox.uid)
            assert (worktree.path / "out.o").exists()  # it may write its own tree
            assert "SCRATCH-OK" in outcome.detail
            assert "HOOK-WRITTEN" not in outcome.detail
            assert "CONFIG-WRITTEN" not in outcome.detail
            assert "READ-PID1-ENV" not in outcome.detail
        assert not (worktree.path / "pwned").exists()
    assert not (mirror / "hooks" / "post-checkout").exists()
    assert stat.S_IMODE((mirror / "config").stat().st_mode) & 0o022 == 0


@ROOT_ONLY
@BWRAP
async def test_bwrap_mode_hides_the_network_and_other_folders(open_tmp: Path) -> None:
    mirror, pool = await _mirror_and_worktree(open_tmp)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    secret = open_tmp / "work" / "other-task-secret"
    probe = (
        f'ls {open_tmp}/work | grep -q other-task-secret && echo SAW-OTHER-WORK; '
        f'ls {mirror.parent} | grep -q "\\.lock$" && echo SAW-CACHE; '
        f'python3 -c "import socket; socket.create_connection((\'127.0.0.1\', {port}), 2)" '
        '2>/dev/null && echo NET-ON; '
        'test "$(ls /proc | grep -c "^[0-9]")" -lt 10 && echo OWN-PIDS; '
        'git log --oneline -1 > /dev/null && echo GIT-OK; '
        'id -u; touch /usr/pwned 2>/dev/null && echo WROTE-ROOT; echo x > built; exit 0')
    try:
        async with pool:
            worktree = await pool.acquire()
            secret.write_text("x")
            await pool.checkout(worktree, "HEAD")
            sandbox = Sandbox.from_env({"BISECT_SANDBOX": "bwrap"})
            off = await _tester(probe, sandbox).test("c", worktree.path)
            assert off.verdict is Verdict.GOOD, off.detail
            assert "NET-ON" not in off.detail and "OWN-PIDS" in off.detail
            assert "SAW-OTHER-WORK" not in off.detail and "SAW-CACHE" not in off.detail
            assert "GIT-OK" in off.detail and "WROTE-ROOT" not in off.detail
            assert (worktree.path / "built").exists()
            on = await _tester(probe, sandbox, network=True).test("c", worktree.path)
            assert "NET-ON" in on.detail, on.detail
    finally:
        listener.close()


async def test_untracked_script_where_the_command_was_run_is_used(tmp_path: Path) -> None:
    """``bisect-run ... -- ./repro.sh`` with repro.sh untracked, next to the user."""
    user = tmp_path / "user"
    user.mkdir()
    (user / "repro.sh").write_text("#!/bin/sh\necho from-user; exit 0\n")
    (user / "repro.sh").chmod(0o755)
    worktree = tmp_path / "worktree"
    worktree.mkdir()
    sandbox = Sandbox()
    tester = _tester(["./repro.sh"], sandbox, base_dir=str(user))
    outcome = await tester.test("c", worktree)
    assert outcome.verdict is Verdict.GOOD and "from-user" in outcome.detail, outcome.detail
    # A commit that has the script runs its own, as git bisect run would.
    (worktree / "repro.sh").write_text("#!/bin/sh\necho from-commit; exit 1\n")
    (worktree / "repro.sh").chmod(0o755)
    outcome = await tester.test("c", worktree)
    assert "from-commit" in outcome.detail


def test_bisect_run_uses_an_untracked_script_from_where_it_is_run(tmp_path: Path) -> None:
    """Issue 16: every commit used to be a skip, the script being looked up in each
    checkout."""
    repo = make_repo(tmp_path / "repo", 10, 6)
    user = tmp_path / "elsewhere"
    user.mkdir()
    (user / "repro.sh").write_text("#!/bin/sh\ngrep -q bad state.txt && exit 1\nexit 0\n")
    (user / "repro.sh").chmod(0o755)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    env.pop("BISECT_SANDBOX", None)
    done = subprocess.run(
        [sys.executable, "-m", "consumer.engine.cli", "--repo", str(repo.path),
         "--bad", repo.head, "--good", repo.root, "--", "./repro.sh"],
        cwd=user, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
    assert f"first bad commit: {repo.culprit}" in done.stdout


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@ROOT_ONLY
async def test_user_mode_reaps_what_a_test_detached(open_tmp: Path) -> None:
    """``setsid`` takes a process out of the test's group; the run marker still finds it."""
    worktree = open_tmp / "wt"
    worktree.mkdir()
    pidfile = open_tmp / "wt" / "daemon.pid"
    command = ("setsid sh -c 'cd /; echo $$ > \"$0\"; exec sleep 300' " + str(pidfile)
               + " < /dev/null > /dev/null 2>&1 & sleep 0.3; exit 0")
    sandbox = Sandbox.from_env({"BISECT_SANDBOX": "user"})
    outcome = await _tester(command, sandbox).test("c", worktree)
    assert outcome.verdict is Verdict.GOOD, outcome.detail
    pid = int(pidfile.read_text())
    for _ in range(50):
        if not _running(pid):
            break
        await asyncio.sleep(0.02)
    else:
        os.kill(pid, 9)
        raise AssertionError("the detached process outlived its test")
