"""One error contract for every console script.

A mistake the user can fix (a missing path, an unknown preset, a bad argument, a damaged file) is
raised as :class:`UsageError` and printed as one line, ``<prog>: error: <what is wrong and what to
do>``, with exit status 2; a traceback is shown only with ``--verbose`` or for a real bug.
"""
from __future__ import annotations


class UsageError(Exception):
    """A user's mistake: one line naming what is wrong and what to do; the command exits with 2."""


EXIT_USAGE = 2
