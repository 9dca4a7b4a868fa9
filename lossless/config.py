"""Profiles: one configuration mechanism for every command and every notebook.

A profile is a flat YAML file of parameters (``lossless/profiles/{smoke,cpu,paper}.yaml``).
Flat keys mean the same file works three ways:

* the command line: ``lossless data check --profile cpu seed=3``;
* papermill: ``papermill -f lossless/profiles/smoke.yaml chapter.ipynb out.ipynb`` injects each
  key as a variable, and :func:`from_namespace` picks them up in the notebook;
* Python: ``load_profile("cpu", seed=3)``.

Every key has a default in :data:`PARAMETERS`, a meaning and a domain (the values it may take); a
profile only lists what it changes. Unknown keys, values of the wrong type and values outside their
domain are errors that name the key, the value and what is allowed, raised when the configuration
is resolved, before anything is created (a typo must never be ignored silently, and ``ssl_epochs=0``
must not leave an untrained "result").
"""
from __future__ import annotations

import difflib
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml

from .errors import ConfigError  # noqa: F401 (re-exported)

PROFILE_DIR = Path(__file__).parent / "profiles"
DEFAULT_PROFILE = "cpu"


# ------------------------------------------------------------------ the values a parameter may take
class Domain:
    """What values a parameter may take: ``check(value)`` is true for an allowed value, and
    ``allowed`` says in words what is allowed (it ends the error message of a rejected value).
    Types are already checked (see :func:`_coerce`); a domain checks the value."""

    def __init__(self, allowed: str, check: Callable[[Any], bool], bad: tuple = ()):
        self.allowed, self.check = allowed, check
        self.bad = bad  # values it rejects, as ``key=value`` text: the tests try each one

    def __repr__(self) -> str:
        return f"Domain({self.allowed})"


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def at_least(low, kind=int) -> Domain:
    what = "an integer" if kind is int else "a finite number"
    below = low - 1 if kind is int else low / 2
    return Domain(f"{what} >= {low}", lambda v: _finite(v) and v >= low, (str(below), "nan", "x"))


def choice(*options) -> Domain:
    return Domain("one of " + ", ".join(map(str, options)), lambda v: v in options, ("nonsense", "[1, 2]"))


def optional(domain: Domain) -> Domain:
    return Domain(f"null or {domain.allowed}", lambda v: v is None or domain.check(v), domain.bad)


def _sizes_ok(v) -> bool:
    try:
        return len(sizes(v)) > 0
    except ValueError:
        return False


def _percentages_ok(v) -> bool:
    try:
        values = percentages(v)
    except ValueError:
        return False
    return bool(values) and all(0 < x <= 100 for x in values) and sum(values) <= 100 + 1e-9


def sizes(text) -> tuple[int, ...]:
    """``"1024-1024-1024"`` (or a sequence) -> (1024, 1024, 1024); ValueError unless positive integers."""
    parts = text.split("-") if isinstance(text, str) else list(text) if isinstance(text, (list, tuple)) else str(text).split("-")
    out = tuple(int(t) for t in parts)
    if any(n < 1 for n in out):
        raise ValueError(text)
    return out


def percentages(text) -> list[float]:
    """``"3,3,3"`` -> [3.0, 3.0, 3.0]; ValueError when a part is not a number."""
    return [float(t) for t in str(text).replace("-", ",").split(",") if t.strip()]


METHOD_NAMES = ("barlow", "simclr", "byol", "swav")
BACKBONES = ("resnet34", "resnet18", "resnet10", "vgg16", "vgg16-5pool")


def table1_runs(text) -> list[tuple[str, str | None]]:
    """``"barlow,byol:resnet34"`` -> [("barlow", None), ("byol", "resnet34")]: section 4's
    comparison runs, each a method and the backbone it pretrains (None: the profile's own).
    ValueError names the first bad entry."""
    out = []
    for part in (t.strip() for t in str(text).split(",")):
        method, _, net = part.partition(":")
        method, net = method.strip(), net.strip() or None
        if method not in METHOD_NAMES or (net is not None and net not in BACKBONES) or (method, net) in out:
            raise ValueError(part)
        out.append((method, net))
    return out


def architecture_networks(text) -> list[tuple[str, float | None]]:
    """``"resnet18,resnet18@0.125"`` -> [("resnet18", None), ("resnet18", 0.125)]: the networks of
    section 4's architecture experiment, each a backbone and optionally its width (None: the
    profile's). ValueError names the first bad entry."""
    out: list[tuple[str, float | None]] = []
    for part in (t.strip() for t in str(text).split(",")):
        name, _, w = part.partition("@")
        try:
            width = float(w) if w.strip() else None
        except ValueError:
            raise ValueError(part) from None
        if name.strip() not in BACKBONES or (width is not None and not (math.isfinite(width) and width > 0)) \
                or (name.strip(), width) in out:
            raise ValueError(part)
        out.append((name.strip(), width))
    return out


def _arch_ok(v) -> bool:
    try:
        return isinstance(v, str) and len(architecture_networks(v)) > 0
    except ValueError:
        return False


def _table1_ok(v) -> bool:
    try:
        return isinstance(v, str) and len(table1_runs(v)) > 0
    except ValueError:
        return False


TEXT = Domain("a string", lambda v: isinstance(v, str), ("[1, 2]", "{a: 1}"))
BOOL = Domain("true or false", lambda v: isinstance(v, bool), ("maybe", "2"))
POSITIVE_INT = at_least(1)
NONNEG_INT = at_least(0)
# a seed derives others (seed x 1000 + round for k-means), which scikit-learn takes below 2**32
SEED = Domain("an integer from 0 to 1000000", lambda v: _finite(v) and 0 <= v <= 10**6, ("-1", "1000001", "x"))
POSITIVE = Domain("a finite number > 0", lambda v: _finite(v) and v > 0, ("0", "-1", "nan", "inf", "x"))
NONNEG = Domain("a finite number >= 0", lambda v: _finite(v) and v >= 0, ("-1e-3", "nan", "-inf", "x"))
UNIT_INTERVAL_OPEN = Domain("a number in (0, 1)", lambda v: _finite(v) and 0 < v < 1, ("0", "1", "nan"))
UNIT_INTERVAL_OPEN_CLOSED = Domain("a number in (0, 1]", lambda v: _finite(v) and 0 < v <= 1, ("0", "1.5", "nan"))
DEVICE = Domain("auto, cpu, cuda or cuda:N",
                lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None,
                ("gpu", "cuda:x"))
SIZES = Domain("layer sizes as positive integers joined by '-', e.g. 1024-1024-1024", _sizes_ok,
               ("1024-0", "abc", "-"))
PERCENTAGES = Domain("percentages of the pool in (0, 100] separated by commas, adding up to at most 100, "
                     "e.g. 3,3,3", _percentages_ok, ("0", "60,60", "abc", "3,x"))
TABLE1 = Domain(f"methods ({' | '.join(METHOD_NAMES)}), each once, optionally with a backbone "
                f"({' | '.join(BACKBONES)}) after a colon, separated by commas, e.g. barlow,byol:resnet34",
                _table1_ok, ("mocov3", "barlow,barlow", "byol:resnet50", ""))

ARCHITECTURES = Domain(f"backbones ({' | '.join(BACKBONES)}), each optionally with a width after '@', "
                      f"separated by commas, e.g. resnet18,resnet18@0.125,vgg16", _arch_ok,
                      ("resnet50", "resnet18@0", "resnet18,resnet18", "vgg16@x", ""))

# Rules that tie two parameters together: (keys, check(cfg), what is allowed).
RELATIONS: list[tuple[tuple[str, ...], Callable[[Mapping[str, Any]], bool], str]] = [
    (("ssl_warmup_epochs", "ssl_epochs"), lambda c: c["ssl_warmup_epochs"] <= c["ssl_epochs"],
     "the warm-up cannot be longer than the training (ssl_warmup_epochs <= ssl_epochs)"),
]

# name -> (default, what it means, the values it may take). Later stages add their keys here.
PARAMETERS: dict[str, tuple[Any, str, Domain]] = {
    "profile": (DEFAULT_PROFILE, "name of the profile these values came from",
        TEXT),
    # --- data (paper section 3.1) ---
    "dataset": ("fashion-mnist", "synthetic | fashion-mnist | stl10 | nyu-dl21 | imagefolder",
        choice("synthetic", "fashion-mnist", "stl10", "nyu-dl21", "imagefolder")),
    "data_root": (None, "folder holding the dataset's files (None: the source's default search)",
        optional(TEXT)),
    "cache_dir": (None, "where decoded arrays are cached (None: $LOSSLESS_CACHE or ~/.cache/lossless)",
        optional(TEXT)),
    "download": (True, "allow torchvision to download fashion-mnist / stl10 when files are missing",
        BOOL),
    "labels_per_class": (32, "labelled training images per class (the paper: 25,600 / 800 = 32)",
        POSITIVE_INT),
    "val_per_class": (100, "validation images per class carved from the training part",
        POSITIVE_INT),
    "seed": (0, "picks the split (and seeds training)",
        SEED),
    "num_classes": (None, "nyu-dl21 only: number of classes (None: 800)",
        optional(at_least(2))),
    "synthetic_train": (2000, "synthetic: training images",
        POSITIVE_INT),
    "synthetic_test": (500, "synthetic: test images",
        NONNEG_INT),
    "synthetic_classes": (10, "synthetic: number of classes",
        at_least(2)),
    "synthetic_size": (32, "synthetic: image side in pixels",
        at_least(8)),
    "synthetic_channels": (3, "synthetic: 1 (gray) or 3 (colour)",
        choice(1, 3)),
    # --- running ---
    "device": ("auto", "auto | cpu | cuda | cuda:N",
        DEVICE),
    "precision": ("auto", "auto (bf16 on recent GPUs and on CPUs with AVX-512 BF16 or AMX, else fp32 or fp16) | bf16 | fp16 (GPU) | fp32",
        choice("auto", "bf16", "fp16", "fp32")),
    "channels_last": (True, "NHWC memory layout for convolutions (much faster with bf16 on CPU)",
        BOOL),
    "compile": (False, "torch.compile the training step",
        BOOL),
    "runs_dir": (None, "where run folders go (None: $LOSSLESS_RUNS or ./runs)",
        optional(TEXT)),
    "progress": (True, "show progress bars",
        BOOL),
    "checkpoint_every_steps": (0, "also checkpoint every N steps inside an epoch (0: each epoch only)",
        NONNEG_INT),
    # --- backbone (paper section 3.2) ---
    "backbone": ("resnet34", "resnet34 (the paper's) | resnet18 | resnet10 (one block a stage) | vgg16 (fifth block "
                 "dropped) | vgg16-5pool (last convolution dropped; with image_size >= 32)",
        choice(*BACKBONES)),
    "width": (1.0, "channel multiplier of every stage (0.25 on a laptop CPU)",
        POSITIVE),
    "layer4_stride": (2, "2: 6x6 map at 96 px (the paper's text); 1: 12x12 (the authors' code)",
        choice(1, 2)),
    "maxpool": (True, "keep the stem's 3x3/2 max-pool (the paper does)",
        BOOL),
    "image_size": (None, "side the views are resized to (None: the dataset's own)",
        optional(at_least(8))),
    # --- self-supervised pretraining (paper section 3.3) ---
    "ssl_method": ("barlow", "barlow (the paper's) | simclr | byol | swav (its section 4 baselines)",
        choice(*METHOD_NAMES)),
    "ssl_epochs": (1000, "pretraining epochs (the paper: 1000)",
        POSITIVE_INT),
    "ssl_batch_size": (1024, "global batch (the paper: 1024)",
        at_least(2)),
    "ssl_lr": (0.2, "base learning rate per 256 images (scaled by batch/256)",
        POSITIVE),
    "ssl_optimizer": ("lars", "lars (the paper's) | sgd | adamw",
        choice("lars", "sgd", "adamw")),
    "ssl_weight_decay": (1e-6, "weight decay (not on biases and norm parameters)",
        NONNEG),
    "ssl_lars_eta": (1e-3, "LARS trust coefficient: a weight matrix moves about lr x eta of its norm a step "
        "(the Barlow Twins code: 0.001)",
        POSITIVE),
    "ssl_warmup_epochs": (10, "linear warm-up epochs before the cosine decay",
        NONNEG_INT),
    "ssl_max_steps_per_epoch": (None, "cap on steps per epoch (smoke tests, benchmarks)",
        optional(POSITIVE_INT)),
    "projector": ("1024-1024-1024", "projector layer sizes",
        SIZES),
    "barlow_lambda": (5e-3, "weight of the redundancy term (paper 5e-3; authors' code 3.9e-3)",
        POSITIVE),
    "barlow_scale": (1.0, "loss multiplier (authors' code 1/32 = 0.03125)",
        POSITIVE),
    # --- the section 4 baselines (each method's own keys; the rest are shared) ---
    "simclr_projector": ("2048-128", "SimCLR projection head sizes (hidden-output)",
        SIZES),
    "simclr_temperature": (0.5, "NT-Xent temperature (SimCLR's CIFAR-10 setting)",
        POSITIVE),
    "byol_projector": ("4096-256", "BYOL projector sizes (hidden-output)",
        SIZES),
    "byol_predictor": ("4096-256", "BYOL predictor sizes (hidden-output)",
        SIZES),
    "byol_momentum": (0.99, "BYOL target EMA base; rises to 1 on a cosine over the run",
        UNIT_INTERVAL_OPEN),
    "swav_projector": ("2048-128", "SwAV projection head sizes (hidden-output)",
        SIZES),
    "swav_prototypes": (3000, "SwAV prototypes (the reference's ImageNet count)",
        at_least(2)),
    "swav_temperature": (0.1, "SwAV softmax temperature of the swapped prediction",
        POSITIVE),
    "swav_epsilon": (0.05, "Sinkhorn-Knopp regularisation epsilon",
        POSITIVE),
    "swav_iterations": (3, "Sinkhorn-Knopp iterations",
        POSITIVE_INT),
    "swav_freeze_epochs": (1, "epochs the prototypes stay frozen at the start",
        NONNEG_INT),
    "swav_queue": (0, "embeddings kept per large view to balance codes over (0: no queue)",
        NONNEG_INT),
    "swav_queue_start_epoch": (0, "epoch from which the queue is used",
        NONNEG_INT),
    "swav_small_crops": (0, "multi-crop: small views per image besides the two large ones",
        NONNEG_INT),
    # --- section 4's comparison (Table 1): the same budget for every method ---
    "compare_methods": ("simclr:resnet18,byol:resnet34,byol:resnet18,swav:resnet18,barlow:resnet34",
                        "the runs compared: method[:backbone], comma-separated (the default: Table 1's rows)",
        TABLE1),
    "compare_epochs": (80, "pretraining epochs of every compared run (the paper: BYOL and SwAV saturated "
                           "after 80)",
        POSITIVE_INT),
    "arch_networks": ("resnet18,resnet34,vgg16,resnet18@0.125,resnet10",
                      "section 4's architecture experiment: the networks pretrained at compare_epochs "
                      "(name[@width]; no width: the profile's)",
        ARCHITECTURES),
    "ensemble_models": ("barlow:resnet34,byol:resnet34,swav:resnet18",
                        "the compared runs whose fine-tuned classifiers are combined (the paper: Barlow Twins, "
                        "BYOL and SwAV), as in compare_methods",
        TABLE1),
    "ensemble_step": (0.05, "grid step of the weighted ensemble's weights (chosen on validation)",
        Domain("1/n for an integer n from 1 to 100, e.g. 0.05", lambda v: _finite(v) and 0 < v <= 1
               and abs(round(1 / v) * v - 1) < 1e-9 and round(1 / v) <= 100, ("0", "0.3", "2", "nan"))),
    "crop_scale_min": (0.08, "smallest crop area fraction of the random resized crop",
        UNIT_INTERVAL_OPEN_CLOSED),
    "blur_sigma_max": (2.0, "largest Gaussian blur sigma in pixels",
        at_least(0.1, float)),
    "jitter_strength": (1.0, "multiplier of the colour-jitter magnitudes",
        NONNEG),
    "interpolation": ("bilinear", "crop resize: bilinear | bicubic (the authors')",
        choice("bilinear", "bicubic")),
    "knn_k": (20, "neighbours of the k-NN monitor",
        POSITIVE_INT),
    "knn_every": (1, "run the k-NN monitor every N epochs",
        POSITIVE_INT),
    # --- classifier fine-tuning (paper section 3.4) ---
    "ft_epochs": (100, "fine-tuning epochs (the authors' driver: 100)",
        POSITIVE_INT),
    "ft_batch_size": (128, "fine-tuning batch",
        POSITIVE_INT),
    "ft_lr_head": (0.01, "SGD learning rate of the two-layer head",
        POSITIVE),
    "ft_lr_backbone": (0.0008, "SGD learning rate of the backbone",
        NONNEG),
    "ft_weight_decay": (1e-5, "fine-tuning weight decay",
        NONNEG),
    "sup_lr_backbone": (0.05, "backbone rate of the supervised-only baseline (random init), chosen on validation",
        NONNEG),
    "ft_standardize": (True, "standardise backbone features before the head (statistics from unlabelled images)",
        BOOL),
    # --- pseudo-labelling (paper section 3.5) ---
    "pl_rounds": ("3,3,3", "percent of the unlabelled pool added per round (authors' code: 3,2,1)",
        PERCENTAGES),
    "pl_rule": ("global", "global (the paper: top p% of the pool) | balanced (the same number per predicted class) "
                "| threshold (confidence >= pl_threshold, each class at most pl_class_cap of the picks) | gradual "
                "(global, each round split in pl_substeps smaller rounds, the same epochs in all) | none (the "
                "control: the same rounds of training, no pseudo-labels)",
        choice("global", "balanced", "threshold", "gradual", "none")),
    "pl_threshold": (0.95, "threshold rule: the lowest confidence an image may be picked at",
        UNIT_INTERVAL_OPEN),
    "pl_class_cap": (0.2, "threshold rule: the largest share of a round's picks one predicted class may take",
        UNIT_INTERVAL_OPEN_CLOSED),
    "pl_substeps": (3, "gradual rule: rounds each configured round is split into",
        POSITIVE_INT),
    "pl_epochs": (15, "training epochs per round",
        POSITIVE_INT),
    "pl_batch_size": (128, "batch of the rounds' training",
        POSITIVE_INT),
    "pl_lr": (1e-4, "Adam learning rate of the rounds",
        POSITIVE),
    "pl_weight_decay": (1e-5, "Adam weight decay of the rounds",
        NONNEG),
    "pl_plateau_factor": (0.1, "ReduceLROnPlateau factor (paper 0.1; authors' code 0.2)",
        UNIT_INTERVAL_OPEN),
    "pl_patience": (3, "ReduceLROnPlateau patience in epochs",
        NONNEG_INT),
    # --- FixMatch, the semi-supervised baseline (Sohn et al., 2020; lossless/fixmatch.py) ---
    "fm_epochs": (15, "FixMatch epochs (one epoch: one pass over the unlabelled pool)",
        POSITIVE_INT),
    "fm_batch_size": (32, "FixMatch labelled images per step (theirs: 64)",
        POSITIVE_INT),
    "fm_mu": (7, "FixMatch unlabelled images per labelled image in a step",
        POSITIVE_INT),
    "fm_threshold": (0.95, "FixMatch: the confidence on the weak view above which its arg-max is a target",
        UNIT_INTERVAL_OPEN),
    "fm_lambda_u": (1.0, "FixMatch: the weight of the unlabelled loss",
        NONNEG),
    "fm_lr": (0.03, "FixMatch: Nesterov SGD learning rate (cosine to 0.2 of it)",
        POSITIVE),
    "fm_weight_decay": (5e-4, "FixMatch weight decay (weights only)",
        NONNEG),
    "fm_ema": (0.999, "FixMatch: decay of the moving average of the weights that is evaluated",
        Domain("a number in [0, 1)", lambda v: _finite(v) and 0 <= v < 1, ("1", "-0.1", "nan"))),
    "fm_translate": (0.125, "FixMatch views: the largest shift, a fraction of the side",
        Domain("a number in [0, 0.5]", lambda v: _finite(v) and 0 <= v <= 0.5, ("0.6", "-0.1", "nan"))),
    "fm_max_steps_per_epoch": (None, "FixMatch: cap on steps per epoch (smoke tests)",
        optional(POSITIVE_INT)),
    # --- active learning (paper section 3.6) ---
    "al_candidates": (70_000 / 512_000, "most ambiguous pool images kept before k-means: a fraction (<= 1) or a count "
                      "(the paper: 70,000 of 512,000)",
        POSITIVE),
    "al_clusters": (None, "k-means clusters (None: as many as classes, the paper)",
        optional(POSITIVE_INT)),
    "al_per_cluster": (None, "requests per cluster (None: the budget over the clusters, rounded up; the paper: "
                       "12,800 / 800 = 16)",
        optional(POSITIVE_INT)),
    "al_order": ("margin", "order within a cluster: margin (most ambiguous first) | centroid (nearest the centre)",
        choice("margin", "centroid")),
    "al_features": ("backbone", "what k-means clusters: backbone (the paper: the backbone's embedding) | softmax "
                    "(the authors' code: the classifier's softmax vector)",
        choice("backbone", "softmax")),
    "al_budget": (12_800, "labels requested per round (the paper: 12,800)",
        POSITIVE_INT),
    "al_rounds": (1, "request rounds of the active-learning experiment (the paper: one)",
        POSITIVE_INT),
    "al_head_epochs": (30, "epochs of the two-layer head retrained on frozen features after each round",
        POSITIVE_INT),
    "al_head_lr": (0.05, "SGD learning rate of that head (chosen on validation: 30 epochs at 0.05 matched 100 at "
                   "the fine-tuning head's 0.01)",
        POSITIVE),
    "al_typiclust_max_clusters": (500, "TypiClust's cap on its clusters (labelled + budget; Hacohen et al.: 500)",
        at_least(2)),
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
        validate(new, source="arguments")
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


CHAPTERS_KEY = "chapters"  # a profile's defaults for the chapters' own parameters (seed counts)


def chapter_defaults(name: str | os.PathLike = DEFAULT_PROFILE) -> dict[str, Any]:
    """The ``chapters:`` mapping of a profile's file: values for the chapters' own parameters
    (``seeds``, ``al_experiment_seeds``, ...) that a book of this profile uses unless ``-p``
    gives others. The smoke profile runs two seeds where the cpu profile's chapters run five."""
    path = profile_path(name)
    values = yaml.safe_load(path.read_text()) or {}
    found = values.get(CHAPTERS_KEY) if isinstance(values, dict) else None
    if found is None:
        return {}
    if not isinstance(found, dict):
        raise ConfigError(f"profile file {path}: '{CHAPTERS_KEY}' must be a mapping of chapter parameter: value")
    return dict(found)


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
    cfg = Config({k: v for k, (v, _, _) in PARAMETERS.items()})
    cfg["profile"] = Path(name).stem if path.parent != PROFILE_DIR else path.stem
    values.pop(CHAPTERS_KEY, None)  # the book's chapter parameters (lossless.book reads them)
    _apply(cfg, values, source=str(path))
    if overrides:
        if not isinstance(overrides, Mapping):
            overrides = parse_overrides(overrides)
        _apply(cfg, overrides, source="overrides")
    _apply(cfg, kwargs, source="arguments")
    validate(cfg, source=f"profile {cfg['profile']}")
    return cfg


def validate(cfg: Mapping[str, Any], source: str = "configuration") -> None:
    """Every value in its domain and every relation between values holds, else a
    :class:`ConfigError` naming the key, the value and what is allowed. Called when a
    configuration is resolved (before anything is created) and again by every stage, since a
    notebook may change ``cfg[...]`` by hand."""
    for key, value in cfg.items():
        if key not in PARAMETERS:
            raise ConfigError(f"{source}: {_unknown_key_message(key)}")
        _checked(key, value, source)
    for keys, check, allowed in RELATIONS:
        if not check(cfg):
            values = ", ".join(f"{k}={cfg[k]!r}" for k in keys)
            raise ConfigError(f"{source}: {values} is not allowed: {allowed}")


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
        cfg[key] = _checked(key, value, source)


def _checked(key: str, value: Any, source: str) -> Any:
    default, meaning, domain = PARAMETERS[key]
    typed = _coerce(key, value, default, source)
    if not domain.check(typed):
        raise ConfigError(f"{source}: {key}={value!r} is not allowed: {domain.allowed} ({meaning})")
    return typed


def _coerce(key: str, value: Any, default: Any, source: str, meaning: str | None = None) -> Any:
    """``value`` as the type of ``default``. Numbers may come as text in any spelling Python's
    ``float()`` / ``int()`` read (YAML reads ``1e-3`` as a string, for one)."""
    if value is None or default is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
    elif isinstance(value, type(default)):
        return value
    elif isinstance(default, str) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # pl_rounds=5 is the text "5"
    meaning = meaning if meaning is not None else PARAMETERS[key][1]
    raise ConfigError(
        f"{source}: {key}={value!r} should be of type {type(default).__name__} "
        f"(default {default!r}); {meaning}"
    )


def coerce_like(key: str, value: Any, default: Any, source: str, meaning: str) -> Any:
    """A value for a parameter that is not in :data:`PARAMETERS` (a chapter's own, such as the
    results chapter's ``seeds``), typed like its declared ``default``."""
    return _coerce(key, value, default, source, meaning)


def _unknown_key_message(key: str) -> str:
    close = difflib.get_close_matches(key, PARAMETERS, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `lossless config --list` shows them all"
    return f"unknown parameter {key!r}{hint}"
