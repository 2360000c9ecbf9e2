"""Finding the Debian sources of the evaluation set, checking they are installed, and decoding their files.

Everything is decoded to mono float32 at 16 kHz (`SAMPLE_RATE`): G.722 through PyAV (the ``eval`` extra),
everything else through soundfile, resampled with soxr. File lists are sorted and de-duplicated by content,
so nothing depends on the order a filesystem lists a directory in.

`root` arguments name the filesystem root the packages are looked for under (``/`` normally; tests point
it at an empty directory to provoke `SourceError`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from metis_rt.audio.files import read_audio, resample, to_mono
from metis_rt.data.catalog import NoiseFiles, Voice, source_by_name
from metis_rt.errors import MetisError

SAMPLE_RATE = 16000  # Hz, the rate of everything the evaluation set contains
DPKG_STATUS = "var/lib/dpkg/status"  # relative to the root
G722_SUFFIX = ".g722"


class SourceError(MetisError):
    """A Debian package (or Python module) the evaluation set is built from is missing."""


@dataclass(frozen=True)
class SourceRecord:
    """A checked source as the manifest lists it."""

    name: str
    package: str
    version: str
    path: str
    licence: str
    copyright: str  # the copyright file the licence was read from

    def to_json(self) -> dict:
        return dict(self.__dict__)


def installed_versions(root: Path) -> dict[str, str]:
    """{package: version} of the packages dpkg lists as installed under `root` (empty if there is no dpkg)."""
    status = Path(root) / DPKG_STATUS
    if not status.is_file():
        return {}
    versions = {}
    for paragraph in status.read_text(encoding="utf-8", errors="replace").split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): ?(.*)$", paragraph, flags=re.MULTILINE))
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            versions[fields["Package"]] = fields.get("Version", "unknown")
    return versions


def check_sources(names: list[str], root: Path = Path("/")) -> list[SourceRecord]:
    """Records for the named sources, sorted by name; `SourceError` naming every missing package otherwise."""
    versions = installed_versions(root)
    records, missing = [], []
    for name in sorted(set(names)):
        source = source_by_name(name)
        if next(under_root(root, source.path).glob(source.probe), None) is None:
            missing.append(source)
            continue
        records.append(
            SourceRecord(
                name=source.name,
                package=source.package,
                version=versions.get(source.package, "unknown"),
                path=source.path,
                licence=source.licence,
                copyright=f"/usr/share/doc/{source.package}/copyright",
            )
        )
    if missing:
        packages = sorted({s.package for s in missing})
        listing = "\n".join(f"  - {s.package}: {s.description} (expected in {s.path})" for s in missing)
        raise SourceError(
            f"the evaluation set is built from Debian packages, and {len(packages)} are not installed:\n"
            f"{listing}\nInstall them with:\n"
            f"  sudo apt-get install -y --no-install-recommends {' '.join(packages)}"
        )
    return records


def under_root(root: Path, absolute: str) -> Path:
    return Path(root) / Path(absolute).relative_to("/")


def voice_files(voice: Voice, root: Path = Path("/")) -> list[Path]:
    """The voice's files, sorted, without exact duplicates (the first path in sorted order is kept)."""
    return _matching_files(source_by_name(voice.source).path, voice.pattern, voice.exclude, root)


def noise_files(noise: NoiseFiles, root: Path = Path("/")) -> list[Path]:
    return _matching_files(source_by_name(noise.source).path, noise.pattern, noise.exclude, root)


def _matching_files(directory: str, pattern: str, exclude: str, root: Path) -> list[Path]:
    base = under_root(root, directory)
    skip = re.compile(exclude) if exclude else None
    seen, files = set(), []
    for path in sorted(base.glob(pattern)):
        relative = path.relative_to(base).as_posix()
        if not path.is_file() or (skip and skip.search(relative)):
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            files.append(path)
    return files


def decode(path: Path) -> np.ndarray:
    """Any source file -> mono float32 [N] at `SAMPLE_RATE`."""
    if path.suffix == G722_SUFFIX:
        return _decode_g722(path)
    samples, sr = read_audio(path)
    return resample(to_mono(samples), sr, SAMPLE_RATE).astype(np.float32, copy=False)


def require_g722_decoder() -> ModuleType:
    """The PyAV module (FFmpeg's G.722 decoder); `SourceError` saying how to install it if it is missing."""
    try:
        import av
    except ImportError as exc:
        raise SourceError(
            "decoding the G.722 Asterisk prompts needs PyAV (module 'av'), which is not installed; "
            'install the evaluation extra: pip install -e ".[eval]"'
        ) from exc
    return av


def _decode_g722(path: Path) -> np.ndarray:
    """Raw G.722 (64 kbit/s, as Asterisk stores it) decodes to 16 kHz int16 through FFmpeg's decoder."""
    av = require_g722_decoder()
    with av.open(str(path), format="g722") as container:
        stream = container.streams.audio[0]
        frames = [frame.to_ndarray().reshape(-1) for frame in container.decode(stream)]
        rate = stream.rate
    if not frames:
        return np.zeros(0, dtype=np.float32)
    pcm = np.concatenate(frames).astype(np.float32) / 32768.0
    return resample(pcm, rate, SAMPLE_RATE).astype(np.float32, copy=False)
