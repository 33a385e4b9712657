"""The one exception type a user can meet.

Every error that bad input can cause (a missing file, a typo in a recipe, an unknown model
name, an impossible label fraction) is raised as a :class:`MedzooError` whose message is one
line saying what is wrong and what to do. The CLI prints it as ``medzoo: error: ...`` and exits
with status 2, without a traceback. Anything else that escapes is a bug.
"""

from __future__ import annotations


class MedzooError(Exception):
    """A user-facing error: one line, what is wrong and what to do."""
