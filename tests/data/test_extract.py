"""Safe extraction: crafted tar and zip archives with escaping paths, links and devices are refused whole."""

import io
import stat
import tarfile
import zipfile

import pytest

from ssmkit.data.extract import safe_extract


def make_tar(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


def regular(name, data=b"ok"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def special(name, kind, linkname=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def test_good_tar_and_zip_extract(tmp_path):
    make_tar(tmp_path / "a.tar.gz", [regular("top/x.txt", b"x"), regular("top/sub/y.txt", b"yy")])
    written = safe_extract(tmp_path / "a.tar.gz", tmp_path / "out")
    assert sorted(p.name for p in written) == ["x.txt", "y.txt"]
    assert (tmp_path / "out" / "top" / "sub" / "y.txt").read_bytes() == b"yy"
    with zipfile.ZipFile(tmp_path / "b.zip", "w") as z:
        z.writestr("d/z.txt", "zz")
    safe_extract(tmp_path / "b.zip", tmp_path / "outz")
    assert (tmp_path / "outz" / "d" / "z.txt").read_text() == "zz"


@pytest.mark.parametrize(
    "member,match",
    [
        (regular("../evil.txt"), "would land outside"),
        (regular("top/../../evil.txt"), "would land outside"),
        (regular("/tmp/evil.txt"), "absolute path"),
        (special("top/link", tarfile.SYMTYPE, "/etc/passwd"), "a link"),
        (special("top/hard", tarfile.LNKTYPE, "top/x.txt"), "a link"),
        (special("top/dev", tarfile.CHRTYPE), "a device"),
        (special("top/blk", tarfile.BLKTYPE), "a device"),
        (special("top/fifo", tarfile.FIFOTYPE), "a device, FIFO"),
    ],
)
def test_crafted_tar_is_refused_whole(tmp_path, member, match):
    make_tar(tmp_path / "bad.tar.gz", [regular("top/x.txt"), member, regular("top/z.txt")])
    with pytest.raises(ValueError, match=match):
        safe_extract(tmp_path / "bad.tar.gz", tmp_path / "out")
    assert list((tmp_path / "out").rglob("*")) == []  # checked before anything is written
    assert not (tmp_path / "evil.txt").exists()


def test_an_existing_link_in_the_target_cannot_be_used_to_escape(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out" / "top").symlink_to(tmp_path / "elsewhere")
    make_tar(tmp_path / "a.tar", [regular("top/x.txt")])
    with pytest.raises(ValueError, match="would land outside"):
        safe_extract(tmp_path / "a.tar", tmp_path / "out")
    assert list((tmp_path / "elsewhere").iterdir()) == []


def zip_with(name, mode):
    info = zipfile.ZipInfo(name)
    info.external_attr = mode << 16
    return info


@pytest.mark.parametrize(
    "info,match",
    [
        (zipfile.ZipInfo("../evil.txt"), "would land outside"),
        (zipfile.ZipInfo("/abs.txt"), "absolute path"),
        (zip_with("d/link", stat.S_IFLNK | 0o777), "a link"),
        (zip_with("d/fifo", stat.S_IFIFO | 0o644), "a device, FIFO"),
    ],
)
def test_crafted_zip_is_refused_whole(tmp_path, info, match):
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as z:
        z.writestr("d/ok.txt", "fine")
        z.writestr(info, "/etc/passwd")
    with pytest.raises(ValueError, match=match):
        safe_extract(tmp_path / "bad.zip", tmp_path / "out")
    assert list((tmp_path / "out").rglob("*")) == []


def test_not_an_archive(tmp_path):
    (tmp_path / "f.txt").write_text("hello")
    with pytest.raises(ValueError, match="neither a tar nor a zip"):
        safe_extract(tmp_path / "f.txt", tmp_path / "out")
