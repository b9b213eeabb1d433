"""compose.yaml and the Dockerfile: valid, and consistent with the README."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_compose_file_validates() -> None:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose is not installed (Debian package docker-compose)")
    env = {**os.environ, "BISECT_API_TOKENS": "a", "BISECT_CONSUMER_TOKEN": "b"}
    result = subprocess.run([tool, "-f", str(ROOT / "compose.yaml"), "config"], env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    config = result.stdout
    consumer = config.split("\n  consumer:\n", 1)[1].split("\n  init-db:\n", 1)[0]
    assert "container_name" not in consumer and "ports:" not in consumer
    assert "stop_grace_period: 45s" in consumer
    # Manticore has no authentication: never published beyond the host's loopback.
    manticore = config.split("\n  manticore:\n", 1)[1].split("\n  producer:\n", 1)[0]
    published = re.findall(r"host_ip: (\S+)|published: \"?(\d+)|- (\S+:\d+:\d+)", manticore)
    assert published, manticore
    for host_ip, _port, short in published:
        assert host_ip in ("", "127.0.0.1") and (not short or short.startswith("127.0.0.1:"))
    assert "host_ip: 127.0.0.1" in manticore or "127.0.0.1:" in manticore


def test_compose_publishes_manticore_on_loopback_only() -> None:
    compose = (ROOT / "compose.yaml").read_text()
    manticore = compose.split("\n  manticore:\n", 1)[1].split("\n  init-db:\n", 1)[0]
    mappings = re.findall(r'^\s+- "([^"]+)"', manticore, re.M)
    assert mappings and all(m.startswith("127.0.0.1:") for m in mappings), mappings


def test_env_example_tokens_are_refused_placeholders() -> None:
    from consumer.settings import PLACEHOLDER_PREFIX

    example = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
                   if "=" in line and not line.startswith("#"))
    for name in ("BISECT_API_TOKENS", "BISECT_CONSUMER_TOKEN"):
        assert example[name].startswith(PLACEHOLDER_PREFIX), name


def test_consumer_grace_fits_stop_grace_period() -> None:
    compose = (ROOT / "compose.yaml").read_text()
    grace = int(re.search(r"BISECT_GRACE_S: \$\{BISECT_GRACE_S:-(\d+)\}", compose).group(1))  # type: ignore[union-attr]
    period = int(re.search(r"stop_grace_period: (\d+)s", compose).group(1))  # type: ignore[union-attr]
    assert period > grace + 5


def test_dockerfile_installs_as_the_readme_says() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "pip install --no-cache-dir ." in dockerfile
    assert "pip install ." in readme
    assert "apt-get install -y --no-install-recommends git" in dockerfile
    assert "apt-get install -y --no-install-recommends git" in readme
    assert re.search(r"^USER bisect$", dockerfile, re.M)
