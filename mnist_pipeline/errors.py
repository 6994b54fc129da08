"""The errors a user can cause and fix, shown as one line rather than a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A bad parameter, a missing run, a bad file, no network: something the user can fix.

    The stage scripts print these as one line (`train.py: error: ...`) and exit non-zero.
    Anything else is a bug and fails loudly, with its traceback.
    """
