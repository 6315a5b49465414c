"""Fetch one manifest source into the downloads directory, verified.

Downloads stream into `<file>.part` and resume with an HTTP Range request after an
interruption; transient failures are retried with exponential backoff. The file gets its
final name only after its size and digests match the manifest (atomic rename). A file whose
digest is wrong is moved aside to `<file>.bad-<digest>` (kept for inspection, never deleted).
Gated sources (registration, agreements) cannot be scripted: the error says exactly where to
put the file, and a file placed there is verified like a download.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import requests
from tqdm import tqdm

from slade_core.data.errors import ChecksumError, DownloadError, MissingFileError
from slade_core.data.manifest import Source
from slade_core.io import file_digest

log = logging.getLogger(__name__)

_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
_CHUNK = 1 << 16  # small reads: a dropped connection loses at most one chunk


class _Interrupted(Exception):
    """The connection ended before the announced length arrived (resume from the .part)."""


def fetch_source(
    source: Source,
    downloads_dir: Path,
    *,
    retries: int = 4,
    backoff_s: float = 2.0,
    timeout_s: float = 60.0,
) -> Path:
    """Return `<downloads_dir>/<filename>`, downloading or asking for it, always verified."""
    downloads_dir.mkdir(parents=True, exist_ok=True)
    target = downloads_dir / source.filename
    if target.is_file():
        verify(target, source)
        return target
    if source.gated or source.url is None:
        raise MissingFileError(placement_message(source, target))
    part = target.with_name(target.name + ".part")
    _download(source.url, part, source, retries, backoff_s, timeout_s)
    verify(part, source, final_name=target)
    os.replace(part, target)
    return target


def placement_message(source: Source, target: Path, reason: str = "") -> str:
    """Tell the user where to get a file and exactly where to put it."""
    lines = [f"{reason or 'dataset file needed'}: {source.filename}"]
    if source.instructions:
        lines.append(f"  get it: {source.instructions.strip()}")
    elif source.url:
        lines.append(f"  from: {source.url}")
    lines.append(f"  place it at: {target}")
    digests = [f"{k} {v}" for k, v in (("sha256", source.sha256), ("md5", source.md5)) if v]
    lines.append(
        "  it will be verified against "
        + (", ".join(digests) if digests else "its size only")
        + "; then run the stage again"
    )
    return "\n".join(lines)


def verify(path: Path, source: Source, final_name: Path | None = None) -> None:
    """Check size and digests; on mismatch move the file aside and raise ChecksumError."""
    problems = []
    size = path.stat().st_size
    if source.size is not None and size != source.size:
        problems.append(f"size {size} bytes, expected {source.size}")
    for algorithm in ("sha256", "md5"):
        expected = getattr(source, algorithm)
        if expected and not problems:
            actual = file_digest(path, algorithm)
            if actual != expected:
                problems.append(f"{algorithm} {actual}, expected {expected}")
    if not problems:
        if not (source.sha256 or source.md5):
            log.warning("%s: the manifest gives no checksum; the file is not verified", path.name)
        return
    name = (final_name or path).name
    aside = path.with_name(f"{name}.bad-{file_digest(path, 'sha256')[:12]}")
    os.replace(path, aside)
    raise ChecksumError(
        f"{name} does not match the manifest ({'; '.join(problems)}). The file was kept aside "
        f"as {aside} (not deleted) for inspection. Delete it and run again to re-download, or "
        f"place a correct copy at {path.with_name(name)}."
    )


def _download(
    url: str, part: Path, source: Source, retries: int, backoff_s: float, timeout_s: float
) -> None:
    """Stream `url` into `part`, resuming from its current size; retry transient failures."""
    failures = 0
    with requests.Session() as session:
        while True:
            try:
                _stream_once(session, url, part, timeout_s)
                return
            except (requests.ConnectionError, requests.Timeout, _Interrupted) as err:
                reason = str(err)
            except requests.HTTPError as err:
                status = err.response.status_code if err.response is not None else None
                if status not in _RETRY_STATUS:
                    raise DownloadError(
                        placement_message(
                            source,
                            part.with_name(source.filename),
                            reason=f"the URL {url} answered HTTP {status} (dead or moved)",
                        )
                    ) from err
                reason = f"HTTP {status}"
            failures += 1
            if failures > retries:
                raise DownloadError(
                    f"downloading {url} failed {failures} times (last: {reason}). The partial "
                    f"file {part} is kept; run again to resume, or "
                    + placement_message(source, part.with_name(source.filename), "place it by hand")
                )
            delay = backoff_s * 2 ** (failures - 1)
            log.warning(
                "download of %s interrupted (%s); retry %d in %.1fs", url, reason, failures, delay
            )
            time.sleep(delay)


def _stream_once(session: requests.Session, url: str, part: Path, timeout_s: float) -> None:
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with session.get(url, headers=headers, stream=True, timeout=timeout_s) as response:
        if offset and response.status_code == 416:  # nothing left to fetch
            return
        response.raise_for_status()
        if offset and response.status_code != 206:  # server ignored Range: start over
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        with (
            open(part, "ab" if offset else "wb") as f,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                desc=part.name[:-5],
                disable=None,
                leave=False,
            ) as bar,
        ):
            try:
                for block in response.iter_content(_CHUNK):
                    f.write(block)
                    bar.update(len(block))
            except requests.RequestException as err:
                raise _Interrupted(f"connection dropped at {f.tell()} bytes: {err}") from err
    if total is not None and part.stat().st_size < total:
        raise _Interrupted(f"got {part.stat().st_size} of {total} bytes")
