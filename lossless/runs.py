"""Run folders: one per stage and configuration, so finished work is found instead of redone.

``runs/{stage}-{hash}/`` holds ``config.json`` (what the hash covers), ``metrics.jsonl``,
``checkpoints/last.pt`` and ``best.pt``, and ``result.json`` once the stage has finished. A
notebook or command asks :func:`find_result` first and computes only when it is missing.
Everything is written atomically (temporary file, fsync, rename): a crash leaves the previous
version, never half a file.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from .errors import LosslessError


def runs_root(cfg: Mapping[str, Any]) -> Path:
    return Path(cfg.get("runs_dir") or os.environ.get("LOSSLESS_RUNS") or "runs")


def config_hash(values: Mapping[str, Any]) -> str:
    return hashlib.sha1(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:10]


def run_dir(cfg: Mapping[str, Any], stage: str, keys: Mapping[str, Any]) -> Path:
    """The folder of ``stage`` for the configuration ``keys`` (created, with config.json)."""
    path = runs_root(cfg) / f"{stage}-{config_hash(keys)}"
    path.mkdir(parents=True, exist_ok=True)
    if not (path / "config.json").exists():
        write_json(path / "config.json", dict(keys))
    return path


def write_json(path: Path, obj: Any) -> None:
    _atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1, default=str).encode()))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def write_jsonl(path: Path, records: list[dict]) -> None:
    _atomic_write(path, lambda f: f.write("".join(json.dumps(r, default=str) + "\n" for r in records).encode()))


def read_jsonl(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def save_checkpoint(path: Path, state: dict) -> None:
    """``torch.save`` to a temporary file, fsync, then rename over ``path``."""
    _atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` (tensors and plain data only)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise LosslessError(f"checkpoint {path} does not exist; run the stage that writes it first") from None
    except Exception as exc:  # pickle / zip errors come in many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise LosslessError(f"checkpoint {path} could not be loaded ({type(exc).__name__}: {first}); it is "
                            f"corrupt or not a lossless checkpoint: delete it to start that stage again") from None


def find_result(path: Path) -> dict | None:
    f = Path(path) / "result.json"
    return read_json(f) if f.is_file() else None


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
