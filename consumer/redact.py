"""Known secret values, scrubbed from everything the consumer stores or logs for a run.

A test prints what it likes; if a secret ever reached it (or the engine's error text), the
output tail would carry it into step rows, the task's result and the log. The consumer knows
its secrets (its own token, the compass account's token, the database password, any
``*TOKEN*``/``*PASSWORD*``/``*SECRET*`` variable it was given), so it replaces each of them
with ``***`` in every string of every engine event before recording it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

from common.errors import ConfigError
from common.settings import DbUrl
from consumer.engine.sandbox import SECRET_NAME

MASK = "***"
MIN_SECRET_CHARS = 4  # shorter values would mangle ordinary text and hide nothing
_DB_URL_NAMES = ("BISECT_DB_URL",)


def secrets_in(environ: Mapping[str, str], spec: Mapping[str, Any] | None = None) -> list[str]:
    """Secret values found in an environment and an engine spec."""
    # Whole values of secret-looking variables (a database URL as a whole too), then the
    # password inside each database URL on its own.
    found: list[str] = [v for k, v in environ.items() if SECRET_NAME.search(k)]
    urls = [environ[k] for k in _DB_URL_NAMES if environ.get(k)]
    if spec is not None:
        tester = spec.get("tester")
        if isinstance(tester, Mapping):
            found += [str(v) for k, v in tester.items() if SECRET_NAME.search(str(k))]
        if isinstance(spec.get("db_url"), str):
            urls.append(spec["db_url"])
    for url in urls:
        try:
            password = DbUrl.parse(url).password
        except ConfigError:
            continue
        found.append(password)
    return found


class Scrubber:
    """Replaces known secret values (and their URL-encoded forms) with ``***``."""

    def __init__(self, values: Iterable[str]) -> None:
        variants = set()
        for value in values:
            if value and len(value) >= MIN_SECRET_CHARS:
                variants.add(value)
                variants.add(quote(value, safe=""))
        # Longest first, so a secret that contains another is masked whole.
        ordered = sorted(variants, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def text(self, value: str) -> str:
        return self._pattern.sub(MASK, value) if self._pattern is not None else value

    def any(self, value: Any) -> Any:
        """``value`` with every string inside it (keys included) scrubbed."""
        if self._pattern is None:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.any(k): self.any(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.any(v) for v in value]
        return value
