"""Errors that are the user's to fix, and the stop of a run by a signal.

`main.py` prints a `UserError` as its message alone (the traceback with `--verbosity=1`) and exits with
`USER_ERROR_EXIT`; an `Interrupted` run (SIGTERM/SIGINT, checkpoint saved) exits with 128 + the signal number, the
shell's convention, so `python main.py ... && next_stage` does not go on after a kill. Each class also derives from
the built-in type the code raised before, so `except ValueError` / `pytest.raises(FileNotFoundError)` keep working.
"""

from __future__ import annotations

USER_ERROR_EXIT = 2


class UserError(Exception):
  """Something the user can fix (a config value, a dataset file, a workdir): the message says what and how."""


class ConfigError(UserError, ValueError):
  """A bad config value or flag; the message names the field."""


class DataError(UserError, ValueError):
  """A bad dataset: the message names the file."""


class MissingFileError(UserError, FileNotFoundError):
  """A file or folder that should exist does not: the message names it."""


class WorkdirError(UserError, RuntimeError):
  """The workdir cannot be used (held by another live process, unreadable checkpoint, disk full)."""


class Interrupted(Exception):
  """A run stopped by a signal after saving its checkpoint; `exit_code` = 128 + signal number."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.signum = signum
    self.exit_code = 128 + int(signum)
