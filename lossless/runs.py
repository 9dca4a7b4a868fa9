"""Run folders: one per stage and configuration, so finished work is found instead of redone.

``runs/{stage}-{hash}/`` holds ``config.json`` (what the hash covers), ``metrics.jsonl``,
``checkpoints/last.pt`` and ``best.pt``, and ``result.json`` once the stage has finished. A
notebook or command asks :func:`find_result` first and computes only when it is missing.

Three rules keep a folder sound whatever happens to the process:

* Everything is written atomically (temporary file, fsync, rename): a crash leaves the previous
  version, never half a file. A full disk (ENOSPC, EDQUOT) ends the write with one
  :class:`DiskFull` message naming the path and the space left, and the previous file intact.
* One process works in a folder at a time: :func:`claim` takes an exclusive ``flock`` on
  ``.lock`` (the operating system releases it when the process dies, so a kill leaves no stale
  lock). A second command on the same folder waits, saying which pid holds it, and then finds
  the first one's result instead of training again.
* Whoever holds the lock removes the temporary files that killed processes left behind.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch

from .errors import DISK_FULL, DiskFull, LosslessError, disk_errors  # noqa: F401

def runs_root(cfg: Mapping[str, Any]) -> Path:
    """Where every run folder goes: ``runs_dir``, else ``$LOSSLESS_RUNS``, else ``./runs`` (absolute)."""
    return Path(cfg.get("runs_dir") or os.environ.get("LOSSLESS_RUNS") or "runs").expanduser().absolute()


def config_hash(values: Mapping[str, Any]) -> str:
    return hashlib.sha1(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:10]


RUN_FOLDER = re.compile(r"^[\w.-]+-[0-9a-f]{10}$")  # what run_dir names: {stage}-{config_hash}


def portable(value: Any) -> Any:
    """``value`` with every absolute path into a run folder made relative to the runs root
    (``/home/me/lossless/runs/pretrain-barlow-e2ecdf4d47/backbone.pt`` ->
    ``runs/pretrain-barlow-e2ecdf4d47/backbone.pt``), through dicts and lists: what a committed
    record keeps, since the absolute folder is only the maker's. Other strings are unchanged."""
    if isinstance(value, Mapping):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v) for v in value]
    if isinstance(value, str) and value.startswith("/"):
        parts = value.split("/")
        at = next((i for i, part in enumerate(parts) if RUN_FOLDER.match(part)), None)
        if at is not None:
            return "/".join(["runs", *parts[at:]])
    return value


def run_dir(cfg: Mapping[str, Any], stage: str, keys: Mapping[str, Any]) -> Path:
    """The folder of ``stage`` for the configuration ``keys`` (created, with config.json)."""
    path = runs_root(cfg) / f"{stage}-{config_hash(keys)}"
    with disk_errors(path):
        path.mkdir(parents=True, exist_ok=True)
    from . import distributed
    # rank 0 alone writes it: another rank's temporary file could be swept away by rank 0's
    # claim (remove_stale_temporaries) while that rank is still writing
    if distributed.info().is_main and not (path / "config.json").exists():
        write_json(path / "config.json", dict(keys))
    return path


# ------------------------------------------------------------------------------ reading and writing
def write_json(path: Path, obj: Any) -> None:
    _atomic_write(path, json.dumps(obj, indent=1, default=str).encode())


def write_bytes(path: Path, payload: bytes | memoryview | Callable[[Any], None]) -> None:
    """``payload`` (bytes, or a function that writes to the open file) into ``path``, atomically."""
    _atomic_write(path, payload)


def write_text(path: Path, text: str) -> None:
    _atomic_write(path, text.encode())


def write_npz(path: Path, **arrays: Any) -> None:
    """``np.savez`` of ``arrays`` into ``path``, atomically."""
    import numpy as np
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    _atomic_write(path, buffer.getbuffer())


def read_json(path: Path) -> Any:
    """The JSON in ``path``; a file that is not JSON is a clear error naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LosslessError(f"{path} is not valid JSON ({exc}); it was edited or damaged by hand: delete it "
                            f"and run the stage again to recompute it") from None


def write_jsonl(path: Path, records: list[dict]) -> None:
    _atomic_write(path, "".join(json.dumps(r, default=str) + "\n" for r in records).encode())


def read_jsonl(path: Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise LosslessError(f"{path}, line {n}, is not valid JSON ({exc}); delete the file (the run's "
                                    f"checkpoint holds the same history and rewrites it)") from None
    return out


def save_checkpoint(path: Path, state: dict) -> None:
    """``torch.save`` into memory, then the bytes to a temporary file, fsync, rename over ``path``.
    (Serialising first means a write error arrives as the OSError it is, not as a zip-writer
    ``RuntimeError: unexpected pos``.)"""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    _atomic_write(path, buffer.getbuffer())


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` (tensors and plain data only)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise LosslessError(f"checkpoint {path} does not exist; run the stage that writes it first") from None
    except Exception as exc:  # pickle / zip errors come in many types
        text = str(exc).strip()
        if "Weights only load failed" in text:  # PyTorch's safe loader; its advice to load unsafely is left out
            detail = [ln.replace("WeightsUnpickler error:", "").strip() for ln in text.splitlines()
                      if ln.strip() and not ln.startswith(("Weights only load failed", "Please file an issue",
                                                           "Check the documentation"))]
            text = next((d for d in detail if d), "refused by the safe loader").rstrip(".")[:160]
            if "GLOBAL" in text:  # a pickle that names functions or classes: it may run code
                raise LosslessError(f"checkpoint {path} holds more than tensors and plain data ({text}): it was "
                                    f"not written by lossless and may run code when loaded; do not load it with "
                                    f"weights_only=False: delete it to start that stage again") from None
        first = text.splitlines()[0] if text else ""
        raise LosslessError(f"checkpoint {path} could not be loaded ({type(exc).__name__}: {first}); it is "
                            f"corrupt or not a lossless checkpoint: delete it to start that stage again") from None


def find_result(path: Path) -> dict | None:
    f = Path(path) / "result.json"
    return read_json(f) if f.is_file() else None


def temporary_name(path: Path) -> Path:
    """The temporary file a write to ``path`` goes through (``.{name}.{pid}.tmp``)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _atomic_write(path: Path, payload: bytes | memoryview | Callable[[Any], None]) -> None:
    path = Path(path)
    tmp = temporary_name(path)
    with disk_errors(path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                if callable(payload):
                    payload(f)
                else:
                    f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


# ------------------------------------------------------------------------------ one process a folder
@contextlib.contextmanager
def claim(path: Path, wait: bool = True) -> Iterator[Path]:
    """Hold the folder ``path`` for this process: an exclusive lock on ``path/.lock``.

    Another process holding it makes this one wait (``wait=True``; a message names the holder's
    pid) or fail with that message. The lock dies with its process, so a killed run leaves nothing
    to clean up by hand. Under ``torchrun`` only rank 0 takes it and the others wait at a barrier,
    so every rank then sees the same folder state. Temporary files of killed writers are removed
    once the lock is held."""
    from . import distributed
    d = distributed.info()
    if not d.is_main:
        distributed.barrier()
        yield path
        distributed.barrier()
        return
    path.mkdir(parents=True, exist_ok=True)
    lock = path / ".lock"
    with disk_errors(lock):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            message = (f"{path} is in use by another lossless process (pid {holder}); the same command is "
                       f"already running there")
            if not wait:
                raise LosslessError(message + ": wait for it to finish, or stop it") from None
            print(f"lossless: {message}: waiting for it to finish, then its result is used", file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        remove_stale_temporaries(path)
        if d.enabled:
            distributed.barrier()
        yield path
        if d.enabled:
            distributed.barrier()
    finally:
        os.close(fd)  # closing releases the lock


def _holder(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode().strip() or "unknown"
    except OSError:
        return "unknown"


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete ``.{name}.{pid}.tmp`` files under ``path`` (left by killed writers). Call it only
    while holding :func:`claim`: then no live process of ours writes there."""
    removed = []
    for tmp in Path(path).rglob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed
