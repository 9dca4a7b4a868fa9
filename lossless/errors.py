"""Errors a user can act on.

Every error raised for bad input names the file or value at fault and says how to fix it; the
command line prints the message alone (no traceback) and exits with status 2.
"""
from __future__ import annotations

import contextlib
import errno
import shutil
from pathlib import Path
from typing import Iterator

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class LosslessError(Exception):
    """Base class: the message is meant for the user and is complete on its own."""


class DataError(LosslessError):
    """A dataset on disk is missing, malformed or does not fit the requested protocol."""


class ConfigError(LosslessError):
    """A profile or a key=value override is unknown or has the wrong type."""


class DiskFull(LosslessError):
    """A write failed for lack of space (or quota); the file it replaced is intact."""


def free_space(path: Path) -> str:
    """The space left on the file system that holds ``path`` (its nearest existing folder)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        free = shutil.disk_usage(p).free
    except OSError:
        return "unknown"
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if free < 1024 or unit == "TB":
            return f"{free:.0f} {unit}" if unit == "bytes" else f"{free:.1f} {unit}"
        free /= 1024
    return "unknown"


def disk_full_message(path: Path, exc: OSError) -> str:
    what = "no space left" if exc.errno == errno.ENOSPC else "the disk quota is exhausted"
    return (f"{what} on the device while writing {path} ({free_space(path)} free there); the previous "
            f"version of the file, if any, is intact. Free some space, or send run folders elsewhere "
            f"(runs_dir=... or LOSSLESS_RUNS; the data cache: LOSSLESS_CACHE), then run the command again "
            f"to resume")


@contextlib.contextmanager
def disk_errors(path: Path) -> Iterator[None]:
    """Turn ENOSPC / EDQUOT raised inside the block into one :class:`DiskFull` naming ``path``."""
    try:
        yield
    except OSError as exc:
        if exc.errno in DISK_FULL:
            raise DiskFull(disk_full_message(Path(exc.filename) if exc.filename else path, exc)) from None
        raise


# a folder that cannot be written or is not a folder: the user points the variable elsewhere
UNWRITABLE = {errno.EROFS: "is on a read-only file system", errno.EACCES: "may not be written by this user",
              errno.EPERM: "may not be written by this user", errno.ENOTDIR: "lies under a file, not a folder",
              errno.EEXIST: "is a file where a folder is needed"}


def unwritable_message(exc: OSError) -> str | None:
    """One line for an OSError that a writable folder elsewhere fixes (read-only, forbidden, a
    file where a folder belongs), naming the path and the variable that moves it; ``None`` for
    any other error."""
    if exc.errno not in UNWRITABLE:
        return None
    from .data.cache import cache_root
    path = Path(exc.filename or ".").absolute()
    cache = cache_root().absolute()
    where = ("the data cache (LOSSLESS_CACHE)" if path == cache or cache in path.parents
             else "the folder for run folders (runs_dir=... or LOSSLESS_RUNS)")
    return (f"{path} {UNWRITABLE[exc.errno]} ({exc.strerror}); nothing was changed there: point {where} "
            f"at a writable folder and run the command again")
