"""Security finding 1, end to end: a repository's test tries to read the consumer's
secrets and to plant a hook in the shared git cache.

A real producer and consumer run as processes on the real database (with a password). The
``evil`` repository's ``check.sh`` prints every secret it can find (its environment and
every readable ``/proc/*/environ``) and writes a ``post-checkout`` hook and a
``core.hooksPath`` into every mirror of the git cache. Then another repository, cloned
before, is bisected again. What must hold:

* the test's environment holds no token and no database URL;
* no secret value is stored (step details hold the output tail);
* the hook never runs, and with the default sandbox (root: tests run as ``nobody``) it is
  not even written, and ``/proc/<consumer>/environ`` is unreadable.

``BISECT_SANDBOX=none`` (tests as the consumer's own uid) shows the layers under the uid:
the test may read the consumer's ``/proc`` environ, but the stored output is scrubbed, and
the hook it wrote is never run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest

from common.repository import Repository
from common.settings import DbUrl, Dialect
from consumer.engine.synthetic import make_repo
from tests.acceptance.support import CONSUMER_TOKEN, MARKER, Cluster, wait_until

pytestmark = pytest.mark.acceptance

COMPASS_TOKEN = "compass-token-Kx81q"
DB_PASSWORD = "db-pass-Kx81q"
EVIL_ERROR = "E_SANDBOX"

ATTACK = r"""#!/bin/sh
# What a malicious repository's test does.
found=$( (env; for f in /proc/[0-9]*/environ; do tr '\0' '\n' < "$f" 2>/dev/null; done) \
  | grep -E '^BISECT_(CONSUMER_TOKEN|COMPASS_TOKEN|DB_URL)=' | sort -u | tr '\n' ' ')
gitdir=$(sed -n 's/^gitdir: //p' .git)
cache=$(dirname "$(dirname "$(dirname "$gitdir")")")
planted=0
for mirror in "$cache"/*.git; do
  printf '#!/bin/sh\necho "$(id -u) $PWD" >> %s\n' "$HOOK_MARK" > "$mirror/hooks/post-checkout" \
    && chmod +x "$mirror/hooks/post-checkout" && planted=$((planted + 1))
  printf '[core]\n\thooksPath = %s/hooks\n' "$mirror" >> "$mirror/config" 2>/dev/null
done
echo "ATTACK-RAN uid=$(id -u) planted=$planted found=[$found]"
if [ -f bad ]; then echo "ERRID: E_SANDBOX"; exit 1; fi
exit 0
"""


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env=env).stdout.strip()


def evil_repo(path: Path, commits: int = 6, culprit: int = 3) -> list[str]:
    path.mkdir(parents=True)
    _git(path, "init", "-q", "-b", "main")
    (path / "check.sh").write_text(ATTACK)
    (path / "check.sh").chmod(0o755)
    shas = []
    for k in range(commits):
        if k == culprit:
            (path / "bad").write_text("broken\n")
        (path / "n").write_text(f"{k}\n")
        _git(path, "add", "-A")
        _git(path, "commit", "-q", "-m", f"commit {k}")
        shas.append(_git(path, "rev-parse", "HEAD"))
    return shas


@pytest.fixture
def open_root() -> Iterator[Path]:
    """A cluster folder every uid can traverse: "cannot write" then means permissions."""
    path = Path(tempfile.mkdtemp(prefix="bisect-sandbox-acceptance-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _with_password(url: DbUrl) -> DbUrl:
    """A database user with a password for this test's database: the secret to hide."""
    if url.dialect is not Dialect.MYSQL:
        return url
    user = f"sbx{os.getpid() % 100000}"
    conn = pymysql.connect(host=url.host, port=url.port, user=url.user,
                           password=url.password, autocommit=True)
    try:
        with conn.cursor() as cursor:
            cursor.execute(f"CREATE USER IF NOT EXISTS '{user}'@'%%' IDENTIFIED BY %s",
                           (DB_PASSWORD,))
            cursor.execute(f"ALTER USER '{user}'@'%%' IDENTIFIED BY %s", (DB_PASSWORD,))
            cursor.execute(f"GRANT ALL ON `{url.database}`.* TO '{user}'@'%'")
    finally:
        conn.close()
    return DbUrl(url.dialect, url.host, url.port, user, DB_PASSWORD, url.database)


def _final(cluster: Cluster, task_id: int) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        task = cluster.task(task_id)
        return task if task["status"] in ("completed", "failed", "cancelled") else None
    try:
        return wait_until(done, 90, f"task {task_id} to finish", interval=0.2)
    except AssertionError:
        print(cluster.logs_tail())
        raise


@pytest.mark.timeout(240)
@pytest.mark.parametrize("sandbox", ["auto", "none"])
async def test_a_test_reads_no_secret_and_plants_no_hook(
        repo: Repository, db_url: DbUrl, open_root: Path, sandbox: str) -> None:
    if sandbox == "auto" and os.geteuid() != 0:
        pytest.skip("the default sandbox runs tests as another uid only when root")
    secret_url = _with_password(db_url)
    hook_ran = open_root / "hook-ran"
    shas = evil_repo(open_root / "evil")
    plain = make_repo(open_root / "plain", 10, 4)
    profiles = {
        "evil": {"kind": "command", "command": ["./check.sh"],
                 "env": {"HOOK_MARK": str(hook_ran)}},
        "plain": {"kind": "command", "command": ["./check.sh"]},
        # Another fingerprint: no verdict of the first run is reused, every step checks out.
        "plain-again": {"kind": "command", "command": ["./check.sh"], "env": {"AGAIN": "1"}},
    }
    cluster = Cluster(open_root, secret_url.to_url())
    try:
        cluster.start_producer(BISECT_TESTERS=",".join(profiles))
        cluster.start_consumer(
            "c", slots=1, BISECT_TESTERS=json.dumps(profiles),
            BISECT_COMPASS_ACCOUNT="bisect-bot", BISECT_COMPASS_TOKEN=COMPASS_TOKEN,
            BISECT_SANDBOX=sandbox, BISECT_SANDBOX_PASS_ENV=MARKER)

        def submit(repo_path: Path, bad: str, good: str, error_id: str, job: str,
                   tester: str) -> int:
            status, answer = cluster.api("POST", "/api/v1/tasks", {
                "bad_job_id": job, "error_id": error_id, "repo_url": str(repo_path),
                "bad_commit": bad, "good_commit": good, "tester": tester})
            assert status in (200, 201), answer
            return int(answer["task"]["id"] if "task" in answer else answer["task_id"])

        first = _final(cluster, submit(plain.path, plain.head, plain.root, plain.error_id,
                                       "plain-1", "plain"))
        assert first["status"] == "completed", first
        evil_id = submit(open_root / "evil", shas[-1], shas[0], EVIL_ERROR, "evil-1", "evil")
        evil = _final(cluster, evil_id)
        assert evil["status"] == "completed", (evil, cluster.logs_tail())
        again = _final(cluster, submit(plain.path, plain.head, plain.root, plain.error_id,
                                       "plain-2", "plain-again"))
        assert again["status"] == "completed", again

        steps = await repo.steps_of_task(evil_id)
        details = " ".join(s.detail or "" for s in steps)
        assert "ATTACK-RAN" in details, details  # the attack did run
        stored = json.dumps([cluster.task(evil_id), [s.to_json() for s in steps]])
        for secret in (CONSUMER_TOKEN, COMPASS_TOKEN, DB_PASSWORD):
            assert secret not in stored, f"{secret} stored"
        assert not hook_ran.exists(), hook_ran.read_text()
        hooks = list(cluster.cache_dir.glob("*.git/hooks/post-checkout"))
        if sandbox == "auto":
            assert "found=[]" in details, details  # no secret in reach at all
            assert f"uid={os.getuid()}" not in details
            assert "planted=0" in details and not hooks, hooks
        else:
            # Same uid: /proc/<consumer>/environ is readable, so only the scrubbing and the
            # disabled hooks stand between the test and the secrets.
            assert "***" in details, details
            assert hooks, "the unsandboxed test could write the hook (and it never ran)"
    finally:
        cluster.kill_all()
