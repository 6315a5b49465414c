"""Errors of the data stage.

All derive from `DataError` so a caller (task, CLI) can catch the stage's own failures and
show the message, which always says what is wrong and what to do about it.
"""

from __future__ import annotations


class DataError(Exception):
    """Base class: a dataset could not be fetched, unpacked, parsed or validated."""


class ManifestError(DataError, ValueError):
    """A dataset manifest or data preset is invalid (the message names the field)."""


class DownloadError(DataError):
    """A file could not be downloaded (dead URL, network failure after retries)."""


class ChecksumError(DataError):
    """A file's digest differs from the manifest; the file was moved aside, not deleted."""


class MissingFileError(DataError):
    """A file the user must place by hand (gated dataset) or a metadata file is missing."""


class ArchiveError(DataError):
    """An archive is truncated/corrupt or holds a member that would escape the target."""
