"""The engine's exceptions: one base class, specific subclasses.

Spec and profile problems raise :class:`common.errors.ValidationError` (``field`` names what
was wrong); everything the engine raises on purpose derives from :class:`EngineError`.
"""

from __future__ import annotations

from common.errors import BisectError


class EngineError(BisectError):
    """Base class of the bisection engine's own errors."""


class GitError(EngineError):
    """A git command failed; the message carries the command and git's stderr."""


class TesterError(EngineError):
    """A tester could not do its work for a reason that is not about the commit."""
