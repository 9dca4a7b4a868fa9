"""Profiles: one configuration mechanism for every command and every notebook.

A profile is a flat YAML file of parameters (``lossless/profiles/{smoke,cpu,paper}.yaml``).
Flat keys mean the same file works three ways:

* the command line: ``lossless data check --profile cpu seed=3``;
* papermill: ``papermill -f lossless/profiles/smoke.yaml chapter.ipynb out.ipynb`` injects each
  key as a variable, and :func:`from_namespace` picks them up in the notebook;
* Python: ``load_profile("cpu", seed=3)``.

Every key has a default in :data:`PARAMETERS`; a profile only lists what it changes. Unknown keys
and values of the wrong type are errors that name the key (a typo must never be ignored silently).
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from .errors import ConfigError

PROFILE_DIR = Path(__file__).parent / "profiles"
DEFAULT_PROFILE = "cpu"

# name -> (default, what it means). Later stages add their keys here.
PARAMETERS: dict[str, tuple[Any, str]] = {
    "profile": (DEFAULT_PROFILE, "name of the profile these values came from"),
    # --- data (paper section 3.1) ---
    "dataset": ("fashion-mnist", "synthetic | fashion-mnist | stl10 | nyu-dl21 | imagefolder"),
    "data_root": (None, "folder holding the dataset's files (None: the source's default search)"),
    "cache_dir": (None, "where decoded arrays are cached (None: $LOSSLESS_CACHE or ~/.cache/lossless)"),
    "download": (True, "allow torchvision to download fashion-mnist / stl10 when files are missing"),
    "labels_per_class": (32, "labelled training images per class (the paper: 25,600 / 800 = 32)"),
    "val_per_class": (100, "validation images per class carved from the training part"),
    "seed": (0, "picks the split (and seeds training)"),
    "num_classes": (None, "nyu-dl21 only: number of classes (None: 800)"),
    "synthetic_train": (2000, "synthetic: training images"),
    "synthetic_test": (500, "synthetic: test images"),
    "synthetic_classes": (10, "synthetic: number of classes"),
    "synthetic_size": (32, "synthetic: image side in pixels"),
    "synthetic_channels": (3, "synthetic: 1 (gray) or 3 (colour)"),
    # --- running ---
    "device": ("auto", "auto | cpu | cuda | cuda:N"),
    "precision": ("auto", "auto (bf16 on CPU and recent GPUs) | bf16 | fp16 (GPU) | fp32"),
    "channels_last": (True, "NHWC memory layout for convolutions (much faster with bf16 on CPU)"),
    "compile": (False, "torch.compile the training step"),
    "runs_dir": (None, "where run folders go (None: $LOSSLESS_RUNS or ./runs)"),
    "progress": (True, "show progress bars"),
    "checkpoint_every_steps": (0, "also checkpoint every N steps inside an epoch (0: each epoch only)"),
    # --- backbone (paper section 3.2) ---
    "backbone": ("resnet34", "resnet34 (the paper's) | resnet18 | vgg16"),
    "width": (1.0, "channel multiplier of every stage (0.25 on a laptop CPU)"),
    "layer4_stride": (2, "2: 6x6 map at 96 px (the paper's text); 1: 12x12 (the authors' code)"),
    "maxpool": (True, "keep the stem's 3x3/2 max-pool (the paper does)"),
    "image_size": (None, "side the views are resized to (None: the dataset's own)"),
    # --- self-supervised pretraining (paper section 3.3) ---
    "ssl_method": ("barlow", "barlow"),
    "ssl_epochs": (1000, "pretraining epochs (the paper: 1000)"),
    "ssl_batch_size": (1024, "global batch (the paper: 1024)"),
    "ssl_lr": (0.2, "base learning rate per 256 images (scaled by batch/256)"),
    "ssl_optimizer": ("lars", "lars (the paper's) | sgd | adamw"),
    "ssl_weight_decay": (1e-6, "weight decay (not on biases and norm parameters)"),
    "ssl_warmup_epochs": (10, "linear warm-up epochs before the cosine decay"),
    "ssl_max_steps_per_epoch": (None, "cap on steps per epoch (smoke tests, benchmarks)"),
    "projector": ("1024-1024-1024", "projector layer sizes"),
    "barlow_lambda": (5e-3, "weight of the redundancy term (paper 5e-3; authors' code 3.9e-3)"),
    "barlow_scale": (1.0, "loss multiplier (authors' code 1/32 = 0.03125)"),
    "crop_scale_min": (0.08, "smallest crop area fraction of the random resized crop"),
    "blur_sigma_max": (2.0, "largest Gaussian blur sigma in pixels"),
    "jitter_strength": (1.0, "multiplier of the colour-jitter magnitudes"),
    "interpolation": ("bilinear", "crop resize: bilinear | bicubic (the authors')"),
    "knn_k": (20, "neighbours of the k-NN monitor"),
    "knn_every": (1, "run the k-NN monitor every N epochs"),
    # --- classifier fine-tuning (paper section 3.4) ---
    "ft_epochs": (100, "fine-tuning epochs (the authors' driver: 100)"),
    "ft_batch_size": (128, "fine-tuning batch"),
    "ft_lr_head": (0.01, "SGD learning rate of the two-layer head"),
    "ft_lr_backbone": (0.0008, "SGD learning rate of the backbone"),
    "ft_weight_decay": (1e-5, "fine-tuning weight decay"),
    "sup_lr_backbone": (0.05, "backbone rate of the supervised-only baseline (random init), chosen on validation"),
    "ft_standardize": (True, "standardise backbone features before the head (statistics from unlabelled images)"),
    # --- pseudo-labelling (paper section 3.5) ---
    "pl_rounds": ("3,3,3", "percent of the unlabelled pool added per round (authors' code: 3,2,1)"),
    "pl_rule": ("global", "global (the paper: top p% of the pool) | balanced (the same number per predicted class)"),
    "pl_epochs": (15, "training epochs per round"),
    "pl_batch_size": (128, "batch of the rounds' training"),
    "pl_lr": (1e-4, "Adam learning rate of the rounds"),
    "pl_weight_decay": (1e-5, "Adam weight decay of the rounds"),
    "pl_plateau_factor": (0.1, "ReduceLROnPlateau factor (paper 0.1; authors' code 0.2)"),
    "pl_patience": (3, "ReduceLROnPlateau patience in epochs"),
}


class Config(dict):
    """A dict of parameters with attribute access (``cfg.seed``) and a helpful KeyError."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(_unknown_key_message(key)) from None

    def replace(self, **values: Any) -> "Config":
        """A copy with some parameters changed (checked and typed like any override)."""
        new = Config(self)
        _apply(new, values, source="arguments")
        return new

    def subset(self, prefix: str) -> dict[str, Any]:
        """The keys that start with ``prefix``, with the prefix removed."""
        return {k[len(prefix):]: v for k, v in self.items() if k.startswith(prefix)}


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def profile_path(name_or_path: str | os.PathLike) -> Path:
    """A built-in profile's file, or the given YAML path."""
    name = str(name_or_path)
    builtin = PROFILE_DIR / f"{name}.yaml"
    if builtin.is_file():
        return builtin
    path = Path(name)
    if path.suffix in {".yaml", ".yml"} and path.is_file():
        return path
    raise ConfigError(
        f"unknown profile {name!r}: choose one of {', '.join(available_profiles())} "
        f"or give the path of a YAML parameter file"
    )


def load_profile(name: str | os.PathLike = DEFAULT_PROFILE,
                 overrides: Mapping[str, Any] | Iterable[str] | None = None,
                 **kwargs: Any) -> Config:
    """Defaults, then the profile's file, then ``overrides`` (a mapping or ``key=value`` strings),
    then keyword arguments."""
    path = profile_path(name)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"profile file {path} is not valid YAML: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"profile file {path} must hold a mapping of key: value lines")
    cfg = Config({k: v for k, (v, _) in PARAMETERS.items()})
    cfg["profile"] = Path(name).stem if path.parent != PROFILE_DIR else path.stem
    _apply(cfg, values, source=str(path))
    if overrides:
        if not isinstance(overrides, Mapping):
            overrides = parse_overrides(overrides)
        _apply(cfg, overrides, source="overrides")
    _apply(cfg, kwargs, source="arguments")
    return cfg


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["seed=3", "dataset=stl10"]`` -> ``{"seed": 3, "dataset": "stl10"}`` (YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. seed=3)")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def from_namespace(namespace: Mapping[str, Any], profile: str | None = None) -> Config:
    """Build a configuration inside a notebook from its variables.

    A chapter's ``parameters`` cell sets ``profile = "cpu"``; papermill injects overrides as
    variables after it. Every variable whose name is a known parameter overrides the profile.
    """
    name = profile or namespace.get("profile", DEFAULT_PROFILE)
    chosen = {k: v for k, v in namespace.items() if k in PARAMETERS and k != "profile"}
    return load_profile(name, chosen)


def _apply(cfg: Config, values: Mapping[str, Any], source: str) -> None:
    for key, value in values.items():
        if key not in PARAMETERS:
            raise ConfigError(f"{source}: {_unknown_key_message(key)}")
        default = PARAMETERS[key][0]
        cfg[key] = _coerce(key, value, default, source)


def _coerce(key: str, value: Any, default: Any, source: str) -> Any:
    if value is None or default is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(value, type(default)):
        return value
    raise ConfigError(
        f"{source}: {key}={value!r} should be of type {type(default).__name__} "
        f"(default {default!r}); {PARAMETERS[key][1]}"
    )


def _unknown_key_message(key: str) -> str:
    close = difflib.get_close_matches(key, PARAMETERS, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `lossless config --list` shows them all"
    return f"unknown parameter {key!r}{hint}"
