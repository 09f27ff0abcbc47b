"""User-facing errors: anything a user can cause (bad path, bad config, bad value) raises UserError.

The CLI prints `error: <message>` on one line and exits with status 2; never a traceback.
"""


class UserError(Exception):
    """A problem with the user's input, reported as one clear line."""
