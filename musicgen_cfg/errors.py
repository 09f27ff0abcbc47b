"""User-facing errors: anything a user can cause (bad path, bad config, bad value) raises UserError.

The CLI prints `error: <message>` on one line and exits with status 2; never a traceback.
"""


class UserError(Exception):
    """A problem with the user's input, reported as one clear line."""


def cannot_write(path, err: Exception) -> UserError:
    """THE one-line error of a failed write: `cannot write PATH: <reason>` (read-only, full disk, not a
    directory, name too long, ...): checkpoint.atomic_directory raises it for the directories it writes,
    the CLI for any other OSError that reaches it."""
    reason = err.strerror if isinstance(err, OSError) and err.strerror else (str(err).strip().splitlines() or [repr(err)])[0]
    return UserError(f"cannot write {path}: {reason}")
