"""Safe extraction of tar and zip archives.

Every member is checked before anything is written: absolute paths, `..` components, links
that point outside the target, and device or fifo members are refused with an error naming
the member. Extraction goes to a temporary sibling directory that is renamed onto the target
only when complete, so a truncated archive leaves nothing half-written behind.
"""

from __future__ import annotations

import posixpath
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath, PureWindowsPath

from slade_core.data.errors import ArchiveError
from slade_core.io import atomic_dir


def extract_archive(archive: Path, target: Path) -> Path:
    """Unpack `archive` into a fresh `target` directory (replaced atomically) and return it."""
    with atomic_dir(target) as tmp:
        safe_extract(archive, tmp)
    return target


def safe_extract(archive: Path, target: Path) -> None:
    """Unpack a tar (any compression) or zip archive into `target`, refusing escapes."""
    target.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, target)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, target)
        else:
            raise ArchiveError(
                f"{archive} is not a readable tar or zip archive (truncated or corrupt?); "
                "delete it and download it again"
            )
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError) as err:
        if isinstance(err, ArchiveError):
            raise
        raise ArchiveError(
            f"{archive} is truncated or corrupt ({err}); delete it and download it again"
        ) from err


def _check_name(archive: Path, name: str) -> None:
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        raise ArchiveError(f"{archive}: member {name!r} has an absolute path; refusing to extract")
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        raise ArchiveError(f"{archive}: member {name!r} contains '..'; refusing to extract")


def _check_link(archive: Path, name: str, link: str, *, relative_to_member: bool) -> None:
    """A link target must stay inside the extraction directory."""
    if link.startswith(("/", "\\")) or PureWindowsPath(link).drive:
        raise ArchiveError(
            f"{archive}: member {name!r} links to absolute path {link!r}; refusing to extract"
        )
    base = posixpath.dirname(name) if relative_to_member else ""
    resolved = posixpath.normpath(posixpath.join(base, link))
    if resolved == ".." or resolved.startswith("../"):
        raise ArchiveError(
            f"{archive}: member {name!r} links to {link!r}, outside the target; refusing to extract"
        )


def _extract_tar(archive: Path, target: Path) -> None:
    with tarfile.open(archive) as tar:
        members = tar.getmembers()  # reads the whole archive: truncation shows up here
        for member in members:
            _check_name(archive, member.name)
            if member.issym():
                _check_link(archive, member.name, member.linkname, relative_to_member=True)
            elif member.islnk():
                _check_link(archive, member.name, member.linkname, relative_to_member=False)
            elif not (member.isfile() or member.isdir()):
                raise ArchiveError(
                    f"{archive}: member {member.name!r} is a device or fifo; refusing to extract"
                )
        # The 'data' filter repeats the checks inside tarfile and drops unsafe permissions.
        tar.extractall(target, members=members, filter="data")


def _extract_zip(archive: Path, target: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            _check_name(archive, info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):
                link = zf.read(info).decode("utf-8", "replace")
                _check_link(archive, info.filename, link, relative_to_member=True)
        zf.extractall(target)  # zip links become small text files, never followed
