"""The one exception type that means "the user can fix this": bad config, missing file, bad option,
malformed input. ``giellm`` prints it as one ``giellm: error: ...`` line (exit 2); any other
exception is a bug and keeps its traceback. It is a ``ValueError``, so callers that catch
``ValueError`` (and tests that expect one) keep working. Pure: no imports.
"""

from __future__ import annotations


class UserError(ValueError):
    """An error caused by the user's input or environment; the message says what to fix."""


__all__ = ["UserError"]
