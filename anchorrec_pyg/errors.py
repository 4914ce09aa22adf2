"""User-facing errors.

Every mistake a user can make (a missing file, a malformed column, a bad config key) raises a
subclass of :class:`AnchorRecError` whose message is one line naming the file, column or key.
The command-line interface prints that line and exits with status 2, without a traceback.
"""


class AnchorRecError(Exception):
    """Base class of all errors caused by user input."""


class DataError(AnchorRecError, ValueError):
    """A dataset file or folder is missing or malformed."""


class ConfigError(AnchorRecError, ValueError):
    """A configuration key is unknown, has the wrong type or is out of range."""


class CheckpointError(AnchorRecError, ValueError):
    """A checkpoint or run folder is missing, malformed or refused as unsafe."""


class OutputError(AnchorRecError, ValueError):
    """An output file or folder cannot be written (read-only, a folder where a file is
    expected, a file where a folder is expected, a full disk)."""


class FolderInUseError(AnchorRecError, RuntimeError):
    """Another process holds the lock of the run or comparison folder."""
