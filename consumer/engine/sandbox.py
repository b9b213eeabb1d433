"""Where a test command runs: an explicit environment, another uid, optionally bubblewrap.

A test is code from the repository being bisected, so it is not trusted. Whatever the mode:

* its environment is built, not inherited: ``PATH``, ``HOME``, ``LANG``, ``TMPDIR`` (a fresh
  folder per run), the names listed in ``BISECT_SANDBOX_PASS_ENV`` (never a secret), the
  profile's ``env`` and ``BISECT_COMMIT``; git inside it runs without hooks;
* it dies with the engine (parent-death signal) and its process group is killed after it.

``BISECT_SANDBOX`` picks how much more (the consumer always sets it for its engines, from
its own ``BISECT_SANDBOX``, default ``auto``). An engine without it is ``bisect-run`` run by
a developer on their own repository: its tests run as ``none`` and, like ``git bisect run``,
inherit the developer's whole environment (there is no secret of a service in it).

* ``auto``: ``user`` when the engine runs as root, else ``none``;
* ``user``: the test runs as ``BISECT_SANDBOX_USER`` (default ``nobody``), which owns its
  worktree and scratch folder and nothing else: not the git cache, not the consumer's files,
  not ``/proc/<consumer>/environ``;
* ``bwrap``: as ``user`` when root, inside bubblewrap: a read-only root, its worktree and
  scratch folder writable, other worktrees and mirrors hidden, its own pid namespace, and
  no network unless the profile says ``"network": true``;
* ``none``: the engine's own uid (``bisect-run`` by a developer).
"""

from __future__ import annotations

import ctypes
import os
import pwd
import re
import shutil
import signal
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from common.errors import ValidationError

SANDBOX_ENV = "BISECT_SANDBOX"
SANDBOX_USER_ENV = "BISECT_SANDBOX_USER"
PASS_ENV_ENV = "BISECT_SANDBOX_PASS_ENV"
DEFAULT_USER = "nobody"
DEFAULT_LANG = "C.UTF-8"
# Names that look like credentials are never passed, whatever BISECT_SANDBOX_PASS_ENV says.
SECRET_NAME = re.compile(r"TOKEN|PASSW|SECRET|CREDENTIAL|PRIVATE|API_?KEY|DB_URL|ACCOUNT",
                         re.IGNORECASE)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# git inside a test: no hooks (a test must not plant code for the next one), and a worktree
# owned by the sandbox user whose mirror is root's is still a repository to it.
_TEST_GIT_CONFIG = {"core.hooksPath": os.devnull, "core.fsmonitor": "false",
                    "safe.directory": "*"}
_PR_SET_PDEATHSIG = 1
# Looked up once here: a child between fork and exec must not load libraries (another thread
# of the parent may have held the loader's lock at the fork).
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl


class SandboxMode(StrEnum):
    AUTO = "auto"
    NONE = "none"
    USER = "user"
    BWRAP = "bwrap"


def set_parent_death_signal(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux).

    Meant for ``preexec_fn``: it runs in the child after any uid change, which would
    otherwise clear the setting. A parent that died before the call leaves us orphaned: exit.
    """
    parent = os.getppid()
    _PRCTL(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


@dataclass(frozen=True)
class Sandbox:
    """How tests run on this host; :meth:`from_env` reads it once per engine."""

    mode: SandboxMode = SandboxMode.NONE  # resolved: never AUTO
    uid: int | None = None  # run tests as this uid (None: our own)
    gid: int | None = None
    user: str = ""
    pass_env: tuple[str, ...] = ()
    bwrap: str | None = None
    inherit_env: bool = False  # bisect-run: the developer's environment, as git bisect run

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Sandbox:
        """The sandbox ``BISECT_SANDBOX*`` ask for; :class:`ValidationError` naming the
        variable when it cannot be had here."""
        env = os.environ if environ is None else environ
        raw = env.get(SANDBOX_ENV, "").strip().lower()
        if not raw:
            return cls(SandboxMode.NONE, inherit_env=True)
        try:
            mode = SandboxMode(raw)
        except ValueError:
            raise ValidationError(SANDBOX_ENV, f"expected one of "
                                  f"{', '.join(m.value for m in SandboxMode)}, got {raw!r}"
                                  ) from None
        pass_env = parse_pass_env(env.get(PASS_ENV_ENV, ""))
        root = os.geteuid() == 0
        if mode is SandboxMode.AUTO:
            mode = SandboxMode.USER if root else SandboxMode.NONE
        if mode is SandboxMode.NONE:
            return cls(SandboxMode.NONE, pass_env=pass_env)
        if mode is SandboxMode.USER and not root:
            raise ValidationError(SANDBOX_ENV, "user needs root to run tests as another uid "
                                  "(use bwrap or none)")
        bwrap = None
        if mode is SandboxMode.BWRAP:
            bwrap = shutil.which("bwrap")
            if bwrap is None:
                raise ValidationError(SANDBOX_ENV, "bwrap: bubblewrap is not installed "
                                      "(Debian package bubblewrap)")
        if not root:
            return cls(mode, pass_env=pass_env, bwrap=bwrap)
        name = env.get(SANDBOX_USER_ENV, "").strip() or DEFAULT_USER
        uid, gid = _lookup_user(name)
        if uid == 0:
            raise ValidationError(SANDBOX_USER_ENV, "must not be root")
        return cls(mode, uid=uid, gid=gid, user=name, pass_env=pass_env, bwrap=bwrap)

    @property
    def drops_uid(self) -> bool:
        return self.uid is not None

    def environment(self, *, commit: str, home: Path, tmpdir: Path,
                    profile_env: Mapping[str, str] | None = None,
                    base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The test's whole environment (nothing else is inherited)."""
        source = os.environ if base is None else base
        if self.inherit_env:
            return {**source, **(profile_env or {}), "TMPDIR": str(tmpdir),
                    "BISECT_COMMIT": commit}
        env = {"PATH": source.get("PATH") or os.defpath,
               "HOME": str(home) if self.mode is not SandboxMode.NONE
               else source.get("HOME", str(home)),
               "LANG": source.get("LANG") or DEFAULT_LANG,
               "TMPDIR": str(tmpdir)}
        for name in self.pass_env:
            if name in source:
                env[name] = source[name]
        env["GIT_CONFIG_NOSYSTEM"] = "1"
        env["GIT_CONFIG_COUNT"] = str(len(_TEST_GIT_CONFIG))
        for index, (key, value) in enumerate(_TEST_GIT_CONFIG.items()):
            env[f"GIT_CONFIG_KEY_{index}"] = key
            env[f"GIT_CONFIG_VALUE_{index}"] = value
        env.update(profile_env or {})
        env["BISECT_COMMIT"] = commit
        return env

    def scratch(self, prefix: str = "bisect-test-") -> Path:
        """A fresh folder for the run's ``HOME`` and ``TMPDIR``, owned by the test's uid.

        It lives in the system temporary folder, which every uid can reach (a worktree's
        parents may not be), and is removed by :func:`remove_tree` after the run.
        """
        path = Path(tempfile.mkdtemp(prefix=prefix))
        (path / "tmp").mkdir()
        self.hand_over(path)
        return path

    def hand_over(self, path: Path) -> None:
        """Give ``path`` (recursively, never following symlinks) to the test's uid."""
        if self.uid is None or self.gid is None:
            return
        uid, gid = self.uid, self.gid
        os.lchown(path, uid, gid)
        for root, dirs, files in os.walk(path):
            for name in (*dirs, *files):
                try:
                    os.lchown(os.path.join(root, name), uid, gid)
                except FileNotFoundError:
                    pass

    def command(self, argv: Sequence[str], *, cwd: Path, writable: Sequence[Path],
                readable: Sequence[Path] = (), hidden: Sequence[Path] = (),
                network: bool = False) -> list[str]:
        """``argv`` as the sandbox runs it (wrapped in bubblewrap in ``bwrap`` mode).

        ``hidden`` folders get an empty tmpfs over them (other worktrees, other mirrors);
        ``readable`` and ``writable`` are bound back inside, at the same paths.
        """
        if self.mode is not SandboxMode.BWRAP or self.bwrap is None:
            return list(argv)
        args = [self.bwrap, "--die-with-parent", "--new-session", "--unshare-all"]
        if network:
            args.append("--share-net")
        args += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                 "--tmpfs", "/tmp", "--tmpfs", "/var/tmp", "--tmpfs", "/dev/shm"]
        for path in sorted({Path(p) for p in hidden}, key=lambda p: len(p.parts)):
            if len(path.parts) > 1:
                args += ["--tmpfs", str(path)]
        binds = [("--ro-bind", Path(p)) for p in readable] + [
            ("--bind", Path(p)) for p in writable]
        for flag, path in sorted(binds, key=lambda b: len(b[1].parts)):
            args += [flag, str(path), str(path)]
        if network:
            for name in ("/etc/resolv.conf", "/etc/hosts"):
                if os.path.exists(name):
                    args += ["--ro-bind", name, name]
        args += ["--chdir", str(cwd), "--"]
        return args + list(argv)

    def reap(self, run_marker: str, folders: Sequence[Path]) -> list[int]:
        """SIGKILL what a test left behind outside its process group (``setsid`` and
        daemons): processes of the sandbox uid whose environment carries ``run_marker`` or
        whose working folder is in ``folders``. Only when tests run as another uid (bwrap's
        pid namespace ends with the test anyway). Returns the pids killed."""
        if self.uid is None:
            return []
        needle = run_marker.encode()
        roots = [str(f) for f in folders]
        killed = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                if entry.stat().st_uid != self.uid:
                    continue
                with open(f"/proc/{entry.name}/environ", "rb") as handle:
                    marked = needle in handle.read()
                cwd = "" if marked else os.readlink(f"/proc/{entry.name}/cwd")
            except OSError:
                continue
            if marked or any(cwd == r or cwd.startswith(r + "/") for r in roots):
                try:
                    os.kill(int(entry.name), signal.SIGKILL)
                    killed.append(int(entry.name))
                except ProcessLookupError:
                    pass
        return killed

    def spawn_options(self) -> dict[str, Any]:
        """Keyword arguments for ``create_subprocess_exec``: the uid and the death signal."""
        options: dict[str, Any] = {"preexec_fn": set_parent_death_signal}
        if self.uid is not None:
            options.update(user=self.uid, group=self.gid, extra_groups=[])
        return options


def parse_pass_env(raw: str, variable: str = PASS_ENV_ENV) -> tuple[str, ...]:
    """``NAME,NAME``: extra variables a test inherits; secret-looking names are refused."""
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    for name in names:
        if not _ENV_NAME.match(name):
            raise ValidationError(variable, f"{name!r} is not a variable name")
        if SECRET_NAME.search(name):
            raise ValidationError(variable, f"{name!r} looks like a secret: tests never get it")
    return names


def _lookup_user(name: str) -> tuple[int, int]:
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except (KeyError, ValueError):
        if name.isdigit():
            return int(name), int(name)
        raise ValidationError(SANDBOX_USER_ENV, f"no such user {name!r}") from None
    return entry.pw_uid, entry.pw_gid


def remove_tree(path: Path) -> None:
    """Remove a folder a test owned (``rmtree`` never follows the symlinks it left)."""
    shutil.rmtree(path, ignore_errors=True)

