"""User-facing errors: bad input that the CLI reports in one line with exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable


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


def exit_on_user_error(main: Callable[[], object], program: str) -> None:
    """Run a script's ``main()``; an :class:`HCDCError` becomes one line ``<program>: error: <message>``
    on stderr and exit code 2, as in the command-line tool (the benchmark scripts' entry point)."""
    try:
        main()
    except HCDCError as exc:
        print(f"{program}: error: {exc}", file=sys.stderr)
        sys.exit(2)
