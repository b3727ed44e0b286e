"""Exceptions a user can act on: each message says what is wrong and where."""


class CotDistillError(Exception):
    """Base class for every error this package raises on purpose."""


class ConfigError(CotDistillError):
    """A recipe, override or DeepSpeed config value is unknown, malformed or contradictory."""


class DataError(CotDistillError):
    """A data file is missing, malformed, or lacks a field; the message names file and line or record."""


class TeacherUnavailable(CotDistillError):
    """A served teacher kept failing past its retry budget during training. The run saves a checkpoint of its
    last finished step and exits 75 (sysexits' EX_TEMPFAIL): rerunning the same command resumes it."""

    exit_code = 75
