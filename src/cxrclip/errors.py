"""User-facing exceptions: the CLI prints their message without a traceback (exit code 2)."""

from __future__ import annotations


class CxrclipError(RuntimeError):
    """An expected failure (bad input, unreachable URL, missing weights) with an actionable message."""
