"""Every relative link and image in the repository's Markdown files resolves.

README.md, docs/*.md and benchmarks/README.md link to each other, to pictures and to source
files; a moved or renamed file must not leave a dead link behind. A link to a Markdown file
with a `#fragment` (or a bare `#fragment` within the file) must name one of that file's
headings, spelt the way GitHub spells heading anchors. External links (http, mailto) are not
fetched.
"""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[1]

# [text](target) and ![alt](target), target up to the first space or ")"; an optional
# "title" after the target is ignored. Reference definitions: [label]: target
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
HTML_SRC = re.compile(r"<(?:img|a)\b[^>]*?\b(?:src|href)=\"([^\"]+)\"", re.IGNORECASE)
FENCE = re.compile(r"^(\s*)(```|~~~)")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.IGNORECASE)


def tracked_markdown() -> list[Path]:
    """The Markdown files git tracks (untracked scratch files are not the repository's)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--", "*.md"],
            cwd=REPO,
            check=True,
            capture_output=True,
        ).stdout.decode()
        files = [REPO / name for name in out.split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "node_modules", ".slade"}
        files = [p for p in REPO.rglob("*.md") if not skip & set(p.relative_to(REPO).parts)]
    return sorted(p for p in files if p.is_file())


def prose(text: str, inline_code: bool = False) -> str:
    """The text outside fenced code blocks, and outside inline code spans unless
    `inline_code` (a link in code is code; a heading keeps its code's text in its anchor)."""
    lines, fence = [], None
    for line in text.splitlines():
        match = FENCE.match(line)
        if fence is None and match:
            fence = match.group(2)
            lines.append("")
        elif fence is not None:
            if line.strip().startswith(fence):
                fence = None
            lines.append("")
        else:
            lines.append(line if inline_code else re.sub(r"(`+)(?:(?!\1).)+?\1", "", line))
    return "\n".join(lines)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed,
    spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links keep their text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)  # \w keeps letters, digits and "_"
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in prose(path.read_text(encoding="utf-8"), inline_code=True).splitlines():
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return frozenset(out)


def links(path: Path) -> list[str]:
    text = prose(path.read_text(encoding="utf-8"))
    found = INLINE_LINK.findall(text) + REFERENCE_DEF.findall(text) + HTML_SRC.findall(text)
    return [target for target in found if not EXTERNAL.match(target)]


def broken(path: Path, target: str) -> str | None:
    """Why `target` (a link in `path`) does not resolve, or None."""
    file_part, _, fragment = target.partition("#")
    file_part = unquote(file_part.split("?", 1)[0])
    if file_part.startswith("/"):
        resolved = REPO / file_part.lstrip("/")  # GitHub resolves "/x" at the repository root
    else:
        resolved = (path.parent / file_part) if file_part else path
    resolved = resolved.resolve()
    try:
        resolved.relative_to(REPO)
    except ValueError:
        return f"{target}: points outside the repository ({resolved})"
    if not resolved.exists():
        return f"{target}: no such file ({resolved.relative_to(REPO)})"
    markdown = resolved.is_file() and resolved.suffix == ".md"
    if fragment and markdown and unquote(fragment).lower() not in anchors(resolved):
        return f"{target}: no heading #{fragment} in {resolved.relative_to(REPO)}"
    return None


MARKDOWN = tracked_markdown()


def test_there_are_docs_to_check() -> None:
    names = {p.relative_to(REPO).as_posix() for p in MARKDOWN}
    assert "README.md" in names


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(path: Path) -> None:
    problems = [why for target in links(path) if (why := broken(path, target))]
    assert not problems, f"{path.relative_to(REPO)}:\n" + "\n".join(problems)


def test_the_checker_catches_dead_links(tmp_path: Path) -> None:
    """The checks above can fail: a missing file, a missing heading and a link outside the
    repository are each reported, while code, external links and good links pass."""
    page = REPO / "README.md"
    assert broken(page, "no/such/file.md") is not None
    assert broken(page, "#no-such-heading-anywhere") is not None
    assert broken(page, "../outside-the-repository.md") is not None
    assert broken(page, "README.md") is None
    text = "[a](https://example.com) `[b](missing.md)`\n```\n[c](missing.md)\n```\n[d](x.md)\n"
    sample = tmp_path / "sample.md"
    sample.write_text(text, encoding="utf-8")
    assert links(sample) == ["x.md"]
    assert slug("Team stack: PostgreSQL, S3, `make team`") == "team-stack-postgresql-s3-make-team"
    assert slug("birds.py: the bird protocol") == "birdspy-the-bird-protocol"
    sample.write_text("# Two stages (`blocks = 2`)\n```\n# not a heading\n```\n", encoding="utf-8")
    assert anchors(sample) == {"two-stages-blocks--2"}
