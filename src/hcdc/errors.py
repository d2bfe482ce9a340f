"""User-facing errors: bad input that the CLI reports in one line with exit code 2, and file-system failures
(a folder that does not exist, no permission, a full disk) that it reports in one line with exit code 1."""

from __future__ import annotations

import sys
from collections.abc import Callable


class HCDCError(Exception):
    """Base class for every error caused by what the user supplied (files, names, numbers).

    The command-line tool prints ``hcdc: error: <message>`` and exits with code 2 for these, and with code 1
    for an :class:`OSError` (:func:`failure`); anything else is a bug and keeps its traceback.
    """


class DataError(HCDCError):
    """A dataset file or array is missing, corrupt, or inconsistent (shapes, NaN, labels, masks)."""


class ArtifactError(HCDCError):
    """A proxy directory is missing, incomplete, or does not match the documented schema."""


class ConfigError(HCDCError):
    """A name, ratio or option is unknown or out of range."""


USER_ERRORS = (HCDCError, OSError)  # what the command-line tool reports in one line (:func:`failure`)


def failure(exc: HCDCError | OSError) -> tuple[str, int]:
    """The one-line message and exit code of an error the user can act on: an :class:`HCDCError` is bad input
    (exit code 2); an :class:`OSError` is the file system refusing an output or input (exit code 1), named by its
    path, e.g. ``No such file or directory: 'out/fig.png'``."""
    if isinstance(exc, HCDCError):
        return str(exc), 2
    where = f": {exc.filename!r}" if exc.filename is not None else ""
    return f"{exc.strerror or exc}{where}", 1


def exit_on_user_error(main: Callable[[], object], program: str) -> None:
    """Run a script's ``main()``; an error the user can act on (:func:`failure`) becomes one line
    ``<program>: error: <message>`` on stderr and its exit code, as in the command-line tool (the benchmark
    scripts' entry point)."""
    try:
        main()
    except USER_ERRORS as exc:
        message, code = failure(exc)
        print(f"{program}: error: {message}", file=sys.stderr)
        sys.exit(code)
