"""User-facing errors: bad input that the CLI reports in one line with exit code 2."""

from __future__ import annotations


class HCDCError(Exception):
    """Base class for every error caused by what the user supplied (files, names, numbers).

    The command-line tool prints ``hcdc: error: <message>`` and exits with code 2 for these;
    anything else is a bug and keeps its traceback.
    """


class DataError(HCDCError):
    """A dataset file or array is missing, corrupt, or inconsistent (shapes, NaN, labels, masks)."""


class ArtifactError(HCDCError):
    """A proxy directory is missing, incomplete, or does not match the documented schema."""


class ConfigError(HCDCError):
    """A name, ratio or option is unknown or out of range."""
