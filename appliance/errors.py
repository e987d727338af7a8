"""Errors a user can cause and fix; the CLI prints them as one line, without a traceback."""

from __future__ import annotations


class ApplianceError(Exception):
    """A problem the user can fix; the message names the field or value and the fix."""
