"""Safe extraction: escapes are refused naming the member, nothing lands outside the target."""

from __future__ import annotations

import io
import tarfile
import zipfile

import pytest

from slade_core.data.archive import extract_archive, safe_extract
from slade_core.data.errors import ArchiveError


def _tar(path, members):
    """members: (name, kind, data_or_link) with kind file/symlink/hardlink."""
    with tarfile.open(path, "w:gz") as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            else:
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = payload
                tar.addfile(info)
    return path


def test_good_tar_and_zip_extract(tmp_path):
    tgz = _tar(tmp_path / "ok.tgz", [("d/a.txt", "file", b"a"), ("d/l", "symlink", "a.txt")])
    out = extract_archive(tgz, tmp_path / "out")
    assert (out / "d" / "a.txt").read_bytes() == b"a"
    assert (out / "d" / "l").read_bytes() == b"a"
    with zipfile.ZipFile(tmp_path / "ok.zip", "w") as zf:
        zf.writestr("x/y.txt", "y")
    safe_extract(tmp_path / "ok.zip", tmp_path / "zout")
    assert (tmp_path / "zout" / "x" / "y.txt").read_text() == "y"


@pytest.mark.parametrize(
    ("members", "needle"),
    [
        ([("ok.txt", "file", b"1"), ("../evil.txt", "file", b"x")], "'../evil.txt' contains '..'"),
        ([("/tmp/abs-evil.txt", "file", b"x")], "'/tmp/abs-evil.txt' has an absolute path"),
        ([("link", "symlink", "../../outside")], "'link' links to '../../outside'"),
        ([("link", "symlink", "/etc/passwd")], "links to absolute path '/etc/passwd'"),
        ([("sub/link", "symlink", "../../x")], "'sub/link' links to '../../x'"),
        ([("hard", "hardlink", "../outside")], "'hard' links to '../outside'"),
    ],
)
def test_escaping_tar_members_are_refused(tmp_path, members, needle):
    archive = _tar(tmp_path / "evil.tgz", members)
    target = tmp_path / "target"
    with pytest.raises(ArchiveError, match=needle.replace("(", r"\(")):
        extract_archive(archive, target)
    assert not target.exists()  # nothing half-written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tgz"]


def test_zip_traversal_and_link_escape_are_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as zf:
        zf.writestr("fine.txt", "ok")
        zf.writestr("../escape.txt", "x")
    with pytest.raises(ArchiveError, match="'../escape.txt'"):
        extract_archive(tmp_path / "evil.zip", tmp_path / "t")
    with zipfile.ZipFile(tmp_path / "link.zip", "w") as zf:
        info = zipfile.ZipInfo("lnk")
        info.external_attr = 0o120777 << 16
        zf.writestr(info, "../../etc")
    with pytest.raises(ArchiveError, match="'lnk' links to '../../etc'"):
        extract_archive(tmp_path / "link.zip", tmp_path / "t2")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "t").exists()


def test_truncated_archive_is_reported(tmp_path):
    archive = _tar(
        tmp_path / "full.tgz", [(f"f{i}.bin", "file", bytes(range(256)) * 200) for i in range(20)]
    )
    data = archive.read_bytes()
    (tmp_path / "cut.tgz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArchiveError, match="truncated or corrupt"):
        extract_archive(tmp_path / "cut.tgz", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "cut.zip").write_bytes(b"PK\x03\x04" + b"\0" * 20)
    with pytest.raises(ArchiveError, match="truncated or corrupt"):
        extract_archive(tmp_path / "cut.zip", tmp_path / "out")
