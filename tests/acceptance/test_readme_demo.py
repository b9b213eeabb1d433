"""The README's "run it" line and the demo lines of "Use it", run exactly as written: a clean
copy of the tree, ``pip install .`` into a fresh virtual environment, ``bisect-admin demo
--keep-running``, the lines of a second terminal, then Ctrl-C. Nothing may be left behind:
no process, no ``bisect-demo-*`` folder in the temp directory, no environment file."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from admin.demo import STOP_GRACE_S

pytestmark = [pytest.mark.acceptance, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
RUN_IT = "pip install . && bisect-admin demo --keep-running"


def readme_blocks(section: str) -> list[str]:
    """The ```sh blocks of one ``## section`` of the README, as text."""
    text = README.read_text(encoding="utf-8")
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", body, re.S)


def first_screen() -> str:
    return re.findall(r"```sh\n(.*?)```", README.read_text(encoding="utf-8"), re.S)[0]


def _clean_copy(target: Path) -> Path:
    """The tracked files of the tree (a clean clone, without the build cruft of this one)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def _fresh_venv(path: Path) -> Path:
    """A new environment seeing this one's installed packages through a .pth line (so `pip
    install .` needs the network only for its build backend), with a `pip` command of its
    own: this pip, run by the new interpreter, installs into the new environment."""
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv",
                    "--without-pip", str(path)], check=True, capture_output=True, timeout=120)
    python = path / "bin" / "python"
    purelib = Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True).stdout.strip())
    (purelib / "outer-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = path / "bin" / "pip"
    pip.write_text(f"#!{python}\nimport sys\nfrom pip._internal.cli.main import main\n"
                   "sys.exit(main())\n")
    pip.chmod(0o755)
    return path / "bin"


def test_readme_lines_run_as_written_against_the_demo(tmp_path: Path) -> None:
    if not Path("/usr/sbin/mariadbd").exists():
        pytest.skip("no mariadbd installed: the demo's private database cannot start")
    assert RUN_IT in first_screen()
    use_it = readme_blocks("Use it")[0]
    assert ". ~/.cache/bisect-task/demo.env" in use_it

    tree = _clean_copy(tmp_path / "clone")
    bin_dir = _fresh_venv(tmp_path / "venv")
    home, temp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    temp.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BISECT_", "VIRTUAL_ENV", "PYTHON", "XDG_"))}
    env.update(HOME=str(home), TMPDIR=str(temp), PATH=f"{bin_dir}:{env['PATH']}",
               PIP_DISABLE_PIP_VERSION_CHECK="1",
               # The user's download cache: the build backend is fetched once, not every run.
               PIP_CACHE_DIR=os.environ.get("PIP_CACHE_DIR")
               or str(Path.home() / ".cache" / "pip"))
    log = (tmp_path / "demo.out").open("w+")
    # Its own session: the SIGINT below reaches it as a terminal's Ctrl-C would.
    demo = subprocess.Popen(["bash", "-c", RUN_IT], cwd=tree, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        while "press Ctrl-C" not in (tmp_path / "demo.out").read_text():
            assert demo.poll() is None, (tmp_path / "demo.out").read_text()[-4000:]
            assert time.monotonic() < deadline, (tmp_path / "demo.out").read_text()[-4000:]
            time.sleep(0.5)
        out = (tmp_path / "demo.out").read_text()
        assert "MATCH" in out and "MISMATCH" not in out
        assert re.search(r"API token: [0-9a-f]{32}", out)
        assert "/dashboard/tasks/" in out
        env_file = home / ".cache" / "bisect-task" / "demo.env"
        assert env_file.stat().st_mode & 0o077 == 0

        second = subprocess.run(["bash", "-euo", "pipefail", "-c", use_it], cwd=home, env=env,
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 0, second.stdout + second.stderr
        assert "completed" in second.stdout  # bisect-cli list: the demo's task
        created = re.search(r"created task (\d+)", second.stdout)
        assert created is not None, second.stdout
        assert f'"id": "{created.group(1)}"' in second.stdout and '"created": false' in (
            second.stdout)
    finally:
        started = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(demo.pid, signal.SIGINT)
        try:
            code = demo.wait(STOP_GRACE_S + 15)
        except subprocess.TimeoutExpired:
            os.killpg(demo.pid, signal.SIGKILL)
            raise
        stopped_in = time.monotonic() - started
        log.close()
    out = (tmp_path / "demo.out").read_text()
    assert code == 0, out[-3000:]
    assert stopped_in < STOP_GRACE_S + 5
    assert re.search(r"producer stopped \(exit 0\)", out) and "killed" not in out
    assert not env_file.exists()
    assert list(temp.glob("bisect-demo-*")) == []
