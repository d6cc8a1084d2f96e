"""Read members of an untrusted ``.tgz`` (or a folder) without extracting anything to disk.

Like torchxrayvision's ``Openi_Dataset`` we read the archive directly. Members that could escape a
target folder if extracted are refused and reported, never read: absolute paths, ``..`` components,
symbolic and hard links, devices, FIFOs. Directories are skipped silently.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cxrclip.errors import CxrclipError

UNSAFE_MEMBER = "unsafe_member"


@dataclass(frozen=True)
class Member:
    """A regular file read from an archive or folder: ``name`` (POSIX relative path) and its bytes."""

    name: str
    data: bytes


@dataclass(frozen=True)
class Rejected:
    """A member refused for safety: ``reason`` is always ``unsafe_member``; ``detail`` says why."""

    name: str
    reason: str
    detail: str


def unsafe_reason(name: str) -> str | None:
    """Why a member name is unsafe (absolute path, drive letter, ``..`` component), else None."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "parent-directory (..) component"
    return None


def _matches(name: str, suffixes: tuple[str, ...] | None) -> bool:
    return suffixes is None or name.lower().endswith(suffixes)


def iter_tar(path: str | Path, suffixes: Iterable[str] | None = None) -> Iterator[Member | Rejected]:
    """Yield safe regular-file members (streamed, in archive order) and :class:`Rejected` entries.

    ``suffixes`` filters regular files by case-insensitive name ending (e.g. ``(".xml",)``); unsafe
    members are reported whatever their suffix. Raises :class:`CxrclipError` when ``path`` is not a
    readable tar archive.
    """
    sfx = tuple(s.lower() for s in suffixes) if suffixes is not None else None
    try:
        tar = tarfile.open(path, mode="r|*")
    except (tarfile.TarError, OSError) as exc:
        raise CxrclipError(f"{path}: not a readable tar archive ({exc})") from exc
    with tar:
        try:
            for info in tar:
                why = unsafe_reason(info.name)
                if why is None and (info.issym() or info.islnk()):
                    why = f"link to {info.linkname!r}"
                elif why is None and not (info.isfile() or info.isdir()):
                    why = "device, FIFO or other special file"
                if why is not None:
                    yield Rejected(info.name, UNSAFE_MEMBER, why)
                    continue
                if info.isdir() or not _matches(info.name, sfx):
                    continue
                fh = tar.extractfile(info)
                yield Member(info.name.lstrip("./") if info.name.startswith("./") else info.name,
                             fh.read() if fh else b"")
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise CxrclipError(f"{path}: archive is corrupt or truncated ({exc})") from exc


def iter_folder(path: str | Path, suffixes: Iterable[str] | None = None) -> Iterator[Member | Rejected]:
    """Yield regular files under ``path`` (sorted, relative POSIX names); symlinks are rejected."""
    root = Path(path)
    if not root.is_dir():
        raise CxrclipError(f"{root}: folder not found")
    sfx = tuple(s.lower() for s in suffixes) if suffixes is not None else None
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for fname in sorted(filenames):
            full = Path(dirpath) / fname
            rel = full.relative_to(root).as_posix()
            if full.is_symlink():
                yield Rejected(rel, UNSAFE_MEMBER, f"link to {os.readlink(full)!r}")
            elif not full.is_file():
                yield Rejected(rel, UNSAFE_MEMBER, "device, FIFO or other special file")
            elif _matches(rel, sfx):
                yield Member(rel, full.read_bytes())


def iter_source(path: str | Path, suffixes: Iterable[str] | None = None) -> Iterator[Member | Rejected]:
    """:func:`iter_folder` for a directory, :func:`iter_tar` otherwise."""
    return iter_folder(path, suffixes) if Path(path).is_dir() else iter_tar(path, suffixes)
