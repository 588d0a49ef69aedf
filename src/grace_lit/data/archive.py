"""The C-MAPSS archive shipped with the package: verify, extract once into a cache, reuse."""
from __future__ import annotations

import hashlib
import shutil
import tarfile
import tempfile
from pathlib import Path

from grace_lit.errors import GraceError

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
ARCHIVE = RESOURCES / "cmapss.tar.xz"
CHECKSUMS = RESOURCES / "SHA256SUMS"
_MARKER = ".verified"


def expected_checksums() -> dict[str, str]:
    pairs = (line.split() for line in CHECKSUMS.read_text().splitlines() if line.strip())
    return {name: digest for digest, name in pairs}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(directory: Path, sums: dict[str, str]) -> None:
    for name, digest in sums.items():
        path = directory / name
        if not path.is_file():
            raise GraceError(f"C-MAPSS file {path} is missing. Fix: delete {directory} so the bundled archive is "
                             f"extracted again, or point dataset.data_dir at a complete copy of the NASA files.")
        if sha256(path) != digest:
            raise GraceError(f"C-MAPSS file {path} fails its SHA-256 check (corrupt or modified). Fix: delete "
                             f"{directory} so the bundled archive is extracted again.")


def ensure_extracted(cache_dir: str | Path) -> Path:
    """Return a directory holding the verified C-MAPSS text files, extracting the bundled archive on first use.

    Extraction goes to a temporary sibling that is renamed into place, so concurrent sweep jobs never read a
    half-written cache.
    """
    target = Path(cache_dir).expanduser() / "cmapss"
    if (target / _MARKER).is_file():
        return target
    if not ARCHIVE.is_file():
        raise GraceError(f"The bundled archive {ARCHIVE} is missing. Fix: reinstall grace-lit from a full checkout.")
    target.parent.mkdir(parents=True, exist_ok=True)
    sums = expected_checksums()
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".cmapss-"))
    try:
        try:
            with tarfile.open(ARCHIVE, "r:xz") as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, EOFError, OSError) as err:
            raise GraceError(f"The bundled archive {ARCHIVE} cannot be read ({err}). Fix: restore it from git "
                             f"(git checkout -- {ARCHIVE.name}).") from err
        verify(tmp, sums)
        (tmp / _MARKER).write_text("sha256 verified\n")
        if target.exists():  # an unverified leftover (interrupted or tampered with): replace it
            shutil.rmtree(target)
        try:
            tmp.rename(target)
        except OSError:  # another job finished first; its copy is verified too
            if not (target / _MARKER).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
