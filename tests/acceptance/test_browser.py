"""The dashboard in headless Chromium, served by a real producer with real data: screenshots
under ``artifacts/screenshots/`` (kept by CI) and a check that the live polling runs."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from common.repository import Repository
from common.settings import DbUrl
from tests.integration.test_dashboard import seed, sha
from tests.producer_support import producer_settings, running_producer

pytestmark = pytest.mark.acceptance

SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
DESKTOP = "1280,1000"
PHONE = "390,844"


def _chromium() -> str:
    found = os.environ.get("BISECT_CHROMIUM") or shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if not found:
        reason = "no Chromium installed (apt-get install chromium): browser test skipped"
        print(reason)
        pytest.skip(reason)
    return found


async def _chromium_run(binary: str, profile: Path, url: str, *args: str) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
        f"--user-data-dir={profile}", *args, url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out


async def _screenshot(binary: str, profile: Path, url: str, name: str, size: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    path.unlink(missing_ok=True)
    await _chromium_run(binary, profile, url, f"--screenshot={path}", f"--window-size={size}")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000  # a rendered page, not a blank one
    return path


async def test_dashboard_in_chromium(repo: Repository, db_url: DbUrl, tmp_path: Path) -> None:
    binary = _chromium()
    async with running_producer(producer_settings(db_url)) as client:
        seeded = await seed(client, repo)
        base = str(client.make_url("")).rstrip("/")
        pages = {
            "dashboard": f"{base}/dashboard",
            "task-completed": f"{base}/dashboard/tasks/{seeded.completed}",
            "task-running": f"{base}/dashboard/tasks/{seeded.running}",
            "task-flaky-completed": f"{base}/dashboard/tasks/{seeded.flaky}",
        }
        for name, url in pages.items():
            tall = name.startswith("task")  # the whole timeline and report in the picture
            await _screenshot(binary, tmp_path / "profile", url, f"{name}-desktop",
                              "1280,1800" if tall else DESKTOP)
            await _screenshot(binary, tmp_path / "profile", url, f"{name}-phone",
                              "390,2400" if tall else PHONE)
        # What a phone shows first of a flaky task: the strip and the posterior rows.
        await _screenshot(binary, tmp_path / "profile", pages["task-flaky-completed"],
                          "task-flaky-completed-phone-first-screen", PHONE)

        # What the browser built: the list's result column and phases, each task's strip.
        listing = (await _chromium_run(binary, tmp_path / "profile", pages["dashboard"],
                                       "--dump-dom")).decode()
        assert "<th>Result</th>" in listing and "<th>Phase</th>" in listing
        assert "confidence 93.0%" in listing and "sched: race in wakeup" in listing
        assert "searching, 12 candidates left" in listing
        flaky = (await _chromium_run(binary, tmp_path / "profile",
                                     pages["task-flaky-completed"], "--dump-dom")).decode()
        assert '<svg id="strip"' in flaky and "first bad" in flaky
        assert "culprit probability" in flaky and "2/6 bad" in flaky
        # The culprit probability after each step: a row per step with a posterior (the
        # screenshots task-flaky-completed-* show them under the strip).
        assert '<g id="posterior"' in flaky and flaky.count('class="posterior-row"') == 4
        assert "culprit probability after each step" in flaky and 'class="p-cell"' in flaky
        assert f"after step 6: {sha('f4')} 93%" in flaky
        assert '<td data-label="Phase" class="num"><div>verifying the culprit</div></td>' in flaky
        completed = (await _chromium_run(binary, tmp_path / "profile",
                                         pages["task-completed"], "--dump-dom")).decode()
        assert '<svg id="strip"' in completed and 'id="posterior"' not in completed

        # The running task's page polls its live route in the browser and swaps in fragments.
        dom = (await _chromium_run(binary, tmp_path / "profile", pages["task-running"],
                                   "--dump-dom", "--virtual-time-budget=10000")).decode()
        assert 'data-live-status="ok"' in dom
        assert "step 3 of ~8" in dom and "searching, 12 candidates left" in dom
        assert f'<dd id="testing"><span class="mono" title="{sha("e-now")}">' in dom
        assert '<svg id="strip"' in dom and 'id="phase"' in dom
        assert "<script>alert" not in dom.split("<script>", 1)[0]
