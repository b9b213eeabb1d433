"""How a user reaches the demo's producer from another terminal: an environment file with its
URL and API token for ``bisect-cli``, and the exact ``bisect-cli`` and ``curl`` lines to try.

The file lives in the user's cache directory (never the temp directory) with mode 0600, and
the demo removes it when it stops: the token dies with the services.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from shlex import quote


def env_file_path() -> Path:
    """``$XDG_CACHE_HOME/bisect-task/demo.env`` (``~/.cache/...`` by default)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "bisect-task" / "demo.env"


def shown_path(path: Path) -> str:
    """The path as a user types it (``~/...`` under the home directory)."""
    home = Path.home()
    try:
        return "~/" + str(path.relative_to(home))
    except ValueError:
        return quote(str(path))


@dataclass(frozen=True)
class DemoAccess:
    base_url: str
    api_token: str
    submit_job_id: int
    error_id: str

    def env_text(self) -> str:
        return ("# bisect-admin demo: its producer and API token; removed when it stops\n"
                f"export BISECT_PRODUCER_URL={quote(self.base_url)}\n"
                f"export BISECT_API_TOKEN={quote(self.api_token)}\n")

    def write_env_file(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(self.env_text())

    def submit_body(self) -> str:
        return json.dumps({"bad_job_id": str(self.submit_job_id), "error_id": self.error_id})

    def lines(self, env_file: Path) -> list[str]:
        """What to type in another terminal, exactly."""
        return [
            f". {shown_path(env_file)}",
            "bisect-cli list",
            f"bisect-cli submit {self.submit_job_id} {quote(self.error_id)}",
            'curl -sS -H "Authorization: Bearer $BISECT_API_TOKEN" '
            '-H "Content-Type: application/json" '
            f"-d {quote(self.submit_body())} \"$BISECT_PRODUCER_URL/api/v1/tasks\"",
        ]
