"""scripts/gpu_data.sh (prepares .gpu-data for the GPU check from PyPI) on the CPU, with stand-in ``curl`` and Python
that record their calls and download nothing: the peers' sdists are used only when their SHA-256 is the pinned one,
a bad download leaves nothing behind, the packages land where scripts/gpu_check.sh looks for them, and a finished
stage is not redone. The real downloads and CUDA builds are the script's purpose and are not repeated here."""

from __future__ import annotations

import hashlib
import io
import os
import pathlib
import re
import shutil
import subprocess
import tarfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_data.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("sha256sum") is None,
                                reason="needs bash and sha256sum")

# curl -fsSL --retry 3 -o FILE URL: copies $SDISTS/<basename of URL> to FILE (fails when absent), logs the URL
FAKE_CURL = """#!/usr/bin/env bash
out= url=
while [ $# -gt 0 ]; do
  case "$1" in -o) out=$2; shift 2 ;; --retry) shift 2 ;; -*) shift ;; *) url=$1; shift ;; esac
done
echo "$url" >> "$CALLS"
cp "$SDISTS/$(basename "$url")" "$out"
"""


def pinned(name: str) -> str:
    return re.search(rf"^{name}=(\S+)$", SCRIPT.read_text(), re.M).group(1)


def sdist(name: str, package: str) -> bytes:
    """A .tar.gz laid out as the peer's sdist: <name>/<package>/__init__.py and <name>/csrc/a.cu."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path, text in ((f"{name}/{package}/__init__.py", b"VERSION = 1\n"), (f"{name}/csrc/a.cu", b"//\n")):
            info = tarfile.TarInfo(path)
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text))
    return buffer.getvalue()


def run(tmp_path: pathlib.Path, *stages: str, sdists: dict[str, bytes], script: pathlib.Path = SCRIPT):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "curl").write_text(FAKE_CURL)
    (bin_dir / "curl").chmod(0o755)
    store = tmp_path / "pypi"
    store.mkdir(exist_ok=True)
    for name, data in sdists.items():
        (store / name).write_bytes(data)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", CALLS=str(tmp_path / "calls"), SDISTS=str(store),
               GPU_DATA=str(tmp_path / "gpu-data"), CACHE=str(tmp_path / "cache"))
    return subprocess.run(["bash", str(script), *stages], env=env, capture_output=True, text=True, timeout=120)


def calls(tmp_path: pathlib.Path) -> list[str]:
    path = tmp_path / "calls"
    return path.read_text().split() if path.exists() else []


def test_pins_are_consistent():
    """Each pinned sdist URL names the version its SHA-256 belongs to, and the hashes are SHA-256 sized."""
    assert pinned("MAMBA_URL").endswith("/mamba_ssm-2.3.2.post1.tar.gz")
    assert pinned("CONV_URL").endswith("/causal_conv1d-1.7.0.tar.gz")
    for name in ("MAMBA_SHA", "CONV_SHA"):
        assert re.fullmatch(r"[0-9a-f]{64}", pinned(name))


def test_peers_from_sdists_with_the_pinned_hash(tmp_path):
    """With sdists whose hashes are pinned (the script's pins replaced by those of stand-in tarballs), the two
    packages land under GPU_DATA as gpu_check.sh expects them, each with a SOURCE naming its tarball and hash."""
    mamba, conv = sdist("mamba_ssm-2.3.2.post1", "mamba_ssm"), sdist("causal_conv1d-1.7.0", "causal_conv1d")
    script = tmp_path / "scripts" / "gpu_data.sh"
    script.parent.mkdir()
    text = SCRIPT.read_text()
    text = text.replace(pinned("MAMBA_SHA"), hashlib.sha256(mamba).hexdigest())
    text = text.replace(pinned("CONV_SHA"), hashlib.sha256(conv).hexdigest())
    script.write_text(text)
    result = run(tmp_path, "peers", script=script,
                 sdists={"mamba_ssm-2.3.2.post1.tar.gz": mamba, "causal_conv1d-1.7.0.tar.gz": conv})
    assert result.returncode == 0, result.stderr
    out = tmp_path / "gpu-data"
    assert (out / "mamba" / "mamba_ssm" / "__init__.py").read_text() == "VERSION = 1\n"
    assert (out / "causal-conv1d" / "causal_conv1d" / "__init__.py").read_text() == "VERSION = 1\n"
    assert not (out / "mamba" / "csrc").exists()  # the package folder only; the CUDA sources stay in the cache
    assert hashlib.sha256(mamba).hexdigest() in (out / "mamba" / "SOURCE").read_text()
    assert "causal_conv1d-1.7.0.tar.gz" in (out / "causal-conv1d" / "SOURCE").read_text()
    assert [c.rsplit("/", 1)[1] for c in calls(tmp_path)] == ["mamba_ssm-2.3.2.post1.tar.gz",
                                                               "causal_conv1d-1.7.0.tar.gz"]
    # a second run finds both and downloads nothing
    again = run(tmp_path, "peers", script=script, sdists={})
    assert again.returncode == 0, again.stderr
    assert len(calls(tmp_path)) == 2
    assert "is there" in again.stderr


def test_a_download_with_another_hash_is_refused(tmp_path):
    """A tarball that is not the pinned one (here: any stand-in) stops the script with the reason, and neither the
    package folder nor the tarball is left behind."""
    result = run(tmp_path, "peers", sdists={"mamba_ssm-2.3.2.post1.tar.gz": sdist("mamba_ssm-2.3.2.post1", "mamba_ssm")})
    assert result.returncode != 0
    assert "SHA-256 of mamba_ssm-2.3.2.post1.tar.gz differs" in result.stderr
    assert not (tmp_path / "gpu-data" / "mamba").exists()
    assert not any((tmp_path / "cache").glob("*.tar.gz"))


def test_unknown_stage(tmp_path):
    result = run(tmp_path, "kernels", sdists={})
    assert result.returncode == 2
    assert "unknown stage 'kernels' (wheels, peers, cuda)" in result.stderr
    assert calls(tmp_path) == []
