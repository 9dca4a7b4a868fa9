"""Section 4's architecture experiment: ResNet against VGG-16 and smaller networks, and
forgetting during the pseudo-label rounds.

The paper: "the performance between ResNet and VGG were comparable", and "smaller architectures
capped at lower accuracy as well as showed the tendency for catastrophic forgetting while in
the pseudo-labeling phase ... each iteration in the pseudo labeling phase showed a drop in the
accuracy on the validation set". Here every network pretrains with Barlow Twins for one equal
budget, the methods comparison's (``compare_epochs``, the same images, batch and optimiser: for
the profile's own network it is that comparison's Barlow Twins run; the committed cpu record
sets it to the main line's length and keeps each network's curve for the length rule,
``table1.course``), then on each seed's labelled set: k-NN and linear probes of the frozen features, fine-tuning, and the
pseudo-label rounds (the global rule). Per network: parameters, FLOPs per image (one forward
pass, counted by ``torch.utils.flop_counter``), pretraining images per second, and per round
the validation and test accuracy and the forgetting counts on the validation images (right
before the round and wrong after it, and the reverse; ``evaluate.forgetting``).

A network is written ``name[@width]`` (``resnet18@0.125``: the profile's ResNet-18 at half its
width); ``arch_networks`` lists them. Every stage is a run folder of its own, and each round's
validation predictions are stored beside its checkpoint, so a stopped experiment resumes.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .. import config as config_mod
from .. import runs
from ..engine import resolve_device, resolve_precision
from ..comparison import Comparison
from ..tables import Verdict
from ..evaluate import forgetting, mean_interval, mean_std, score
from ..finetune import finetune, load_classifier
from ..pretrain import backbone_for, load_data, pretrain
from ..pseudo import pseudo_label
from .claims import frozen_probes
from .table1 import NETWORKS, compare_cfg


def parse_networks(text: str) -> list[tuple[str, float | None]]:
    """``"resnet18,resnet18@0.125,vgg16"`` -> [("resnet18", None), ("resnet18", 0.125), ("vgg16", None)]."""
    return config_mod.architecture_networks(text)


def network_cfg(cfg: Mapping[str, Any], name: str, width: float | None) -> config_mod.Config:
    """``cfg`` for one network: Barlow Twins at ``compare_epochs``, backbone ``name``, ``width``."""
    c = compare_cfg(cfg, "barlow", cfg["compare_epochs"], name)
    return c if width is None else c.replace(width=width)


def label(cfg: Mapping[str, Any]) -> str:
    """"ResNet-18 at width 0.25": no comma, so a list of networks reads as one."""
    return f"{NETWORKS.get(cfg['backbone'], cfg['backbone'])} at width {cfg['width']:g}"


@torch.no_grad()
def cost(cfg: Mapping[str, Any]) -> dict:
    """Parameters of the backbone and its FLOPs for one image (forward pass, eval mode)."""
    from torch.utils.flop_counter import FlopCounterMode
    split = load_data(cfg, False)
    net = backbone_for(cfg, split.data).eval()
    side = cfg.get("image_size") or split.data.image_shape[0]
    x = torch.zeros(1, split.data.image_shape[2], side, side)
    with FlopCounterMode(display=False) as counter:
        net(x)
    return {"parameters": int(sum(p.numel() for p in net.parameters())), "flops": int(counter.get_total_flops())}


def val_predictions(cfg: Mapping[str, Any], checkpoint: Path) -> np.ndarray:
    """A classifier checkpoint's predictions on the validation images, stored beside it."""
    stored = Path(f"{checkpoint}.val-pred.npy")
    if stored.is_file():
        return np.load(stored)
    device = resolve_device(cfg["device"])
    amp = resolve_precision(cfg["precision"], device)
    split = load_data(cfg, False)
    model = load_classifier(cfg, split, Path(checkpoint), device, amp)
    pred = score(model, split.images("val"), model.augmenter.plain, device, amp).prediction.astype(np.int64)

    def write(f):
        np.save(f, pred)
    runs.write_bytes(stored, write)
    return pred


def one_seed(c: Mapping[str, Any], seed: int, backbone_path: Path) -> dict:
    """Probes, fine-tuning and the rounds of one network on seed ``seed``'s labelled set."""
    cs = config_mod.load_profile(c["profile"], {k: v for k, v in c.items() if k != "profile"}, seed=seed,
                                 pl_rule="global")
    row = {"seed": seed, **frozen_probes(cs, backbone_path)}
    ft = finetune(cs, "barlow", backbone_path)
    pl = pseudo_label(cs, ft, backbone_path)
    checkpoints = [Path(ft["classifier"])] + [
        Path(runs.read_json(Path(pl["run"]) / f"round{r['round']}" / "result.json")["classifier"])
        for r in pl["rounds"][1:]]
    preds = [val_predictions(cs, p) for p in checkpoints]
    y = load_data(cs, False).labels("val")
    row.update(finetune=ft["test_accuracy"], pseudo=pl["test_accuracy"],
               rounds=[{"round": r["round"], "val": r["val_accuracy"], "test": r["test_accuracy"]} for r in pl["rounds"]],
               forgetting=[forgetting(a, b, y) for a, b in zip(preds, preds[1:])])
    return row


def architectures(cfg: Mapping[str, Any], networks: str | None = None, seeds: int = 5) -> dict:
    """Every network of ``networks`` (default ``cfg.arch_networks``) on seeds 0..seeds-1."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise config_mod.ConfigError(f"seeds={seeds!r} is not allowed: an integer >= 1")
    config_mod.validate(cfg)
    text = cfg["arch_networks"] if networks is None else networks
    try:
        nets = parse_networks(text)
    except ValueError as exc:
        raise config_mod.ConfigError(f"networks={text!r}: {exc}") from None
    start = time.perf_counter()
    out: dict[str, Any] = {"epochs": cfg["compare_epochs"], "seeds": seeds, "networks": {}}
    for name, width in nets:
        c = network_cfg(cfg, name, width)
        key = name if width is None else f"{name}@{width:g}"
        print(f"lossless architectures: {key} ({c['ssl_epochs']} epochs)", file=sys.stderr)
        pre = pretrain(c)
        path = Path(pre["backbone"])
        per_seed = [one_seed(c, s, path) for s in range(seeds)]
        out["networks"][key] = {"network": label(c), "backbone": c["backbone"], "width": c["width"], **cost(c),
                                "img_per_s": pre.get("img_per_s"), "pretraining_minutes": (pre.get("train_seconds") or 0) / 60,
                                "pretraining_run": pre["run"], "seeds": per_seed, "summary": summarise(per_seed),
                                # validation k-NN after every epoch, for the length rule (table1.course)
                                "history": runs.read_jsonl(Path(pre["run"]) / "metrics.jsonl")}
    out["wall_seconds"] = time.perf_counter() - start  # with whatever runs were loaded, not trained
    return out


def summarise(per_seed: list[dict]) -> dict:
    """Means over seeds, and per round: the change of validation accuracy (paired interval over
    seeds) and the forgetting counts (mean and interval)."""
    out = {m: mean_std([r[m] for r in per_seed]) for m in ("knn_probe", "linear_probe", "finetune", "pseudo")}
    rounds = []
    for k in range(1, len(per_seed[0]["rounds"])):
        f = [r["forgetting"][k - 1] for r in per_seed]
        rounds.append({"round": k, "val_change": round_change({"seeds": per_seed}, k).stats,
                       "forgotten": mean_interval([x["forgotten"] for x in f]),
                       "learned": mean_interval([x["learned"] for x in f])})
    out["rounds"] = rounds
    out["val_by_round"] = [float(np.mean([r["rounds"][k]["val"] for r in per_seed]))
                           for k in range(len(per_seed[0]["rounds"]))]
    return out


def rows(result: Mapping[str, Any]) -> list[dict]:
    """One row per network: cost, probes, fine-tuning and the rounds (test accuracy, mean ± sd)."""
    from ..tables import pm
    out = []
    for key, n in result["networks"].items():
        s = n["summary"]
        out.append({"network": n["network"], "parameters": n["parameters"], "MFLOP per image": n["flops"] / 1e6,
                    "pretraining img/s": n["img_per_s"], "k-NN probe": pm(s["knn_probe"]),
                    "linear probe": pm(s["linear_probe"]), "fine-tuned": pm(s["finetune"]),
                    "after the rounds": pm(s["pseudo"]), "seeds": s["finetune"]["n"]})
    return out


def _by_seed(net: Mapping[str, Any]) -> dict[int, dict]:
    return {r["seed"]: r for r in net["seeds"]}


def _round_name(i: int) -> str:
    return "the fine-tuned start" if i == 0 else "the last round" if i == -1 else f"round {i}"


def round_change(net: Mapping[str, Any], k: int, start: int | None = None) -> Comparison:
    """One network's validation accuracy after round ``k`` (-1: the last) minus after round
    ``start`` (default ``k - 1``; round 0 is the fine-tuned start), paired over its seeds."""
    start = k - 1 if start is None else start
    return Comparison(a=[r["rounds"][k]["val"] for r in net["seeds"]],
                      b=[r["rounds"][start]["val"] for r in net["seeds"]], seeds=[r["seed"] for r in net["seeds"]],
                      arms=(_round_name(k), _round_name(start)), measure="validation accuracy",
                      what=f"{net.get('network', '')}: {_round_name(k)} minus {_round_name(start)}")


def comparison(result: Mapping[str, Any], key: str, measure: str = "finetune", reference: str | None = None
               ) -> Comparison:
    """Network ``key`` minus ``reference`` (default: the first network, the profile's own) on
    test accuracy after fine-tuning (``measure="finetune"``) or after the rounds (``"pseudo"``),
    paired over the seeds both ran."""
    nets = result["networks"]
    ref_key = reference or next(iter(nets))
    for k in (key, ref_key):
        if k not in nets:
            raise KeyError(f"network {k!r} is not among the networks {list(nets)}")
    mine, ref = _by_seed(nets[key]), _by_seed(nets[ref_key])
    shared = sorted(set(mine) & set(ref))
    return Comparison(a=[mine[s][measure] for s in shared], b=[ref[s][measure] for s in shared], seeds=shared,
                      arms=(key, ref_key), what=f"{nets[key]['network']} minus {nets[ref_key]['network']}",
                      measure={"finetune": "fine-tuned", "pseudo": "after the rounds"}.get(measure, measure))


def comparisons(result: Mapping[str, Any], reference: str | None = None) -> dict[str, dict[str, Comparison]]:
    """Per network: its fine-tuned and after-the-rounds test accuracy minus the reference's
    (``"finetune"``, ``"pseudo"``: "comparable", "capped at lower accuracy"; absent for the
    reference itself), and ``"rounds_total"``, its own validation accuracy over all its rounds,
    last round minus the fine-tuned start ("a drop in the accuracy on the validation set" in
    every round adds up here)."""
    nets = result["networks"]
    ref_key = reference or next(iter(nets))
    if ref_key not in nets:
        raise KeyError(f"reference {ref_key!r} is not among the networks {list(nets)}")
    out = {}
    for key, n in nets.items():
        row = {"rounds_total": round_change(n, -1, 0)}
        if key != ref_key:
            row.update({m: comparison(result, key, m, ref_key) for m in ("finetune", "pseudo")})
        out[key] = row
    return out


def comparison_rows(result: Mapping[str, Any], reference: str | None = None) -> list[dict]:
    """``comparisons`` as table rows: points with 95% intervals."""
    rows_ = []
    for key, c in comparisons(result, reference).items():
        cell = {"network": result["networks"][key]["network"]}
        for m, name in (("finetune", "fine-tuned"), ("pseudo", "after the rounds")):
            d = c.get(m)
            cell[f"{name} minus the first network (points)"] = (
                f"{d.number()} {d.interval()}" if d else "(the reference)")
        t = c["rounds_total"]
        cell["validation, last round minus start (points)"] = f"{t.number()} {t.interval()}"
        cell["the rounds, in all"] = t.verdict()
        rows_.append(cell)
    return rows_


def round_rows(result: Mapping[str, Any]) -> list[dict]:
    """Per network and round: the change of validation accuracy (points, paired 95% interval) and
    how many validation images the round forgot and learned (mean [95% interval] over seeds)."""
    from ..tables import interval
    out = []
    for key, n in result["networks"].items():
        for r in n["summary"]["rounds"]:
            d, f, g = round_change(n, r["round"]), r["forgotten"], r["learned"]
            out.append({"network": n["network"], "round": r["round"],
                        "validation change (points)": f"{d.number()} {d.interval()}",
                        "verdict": d.verdict(),
                        "forgotten": f"{f['mean']:.1f} {interval(f, scale=1, digits=1)}",
                        "learned": f"{g['mean']:.1f} {interval(g, scale=1, digits=1)}"})
    return out


def values(result: Mapping[str, Any], cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What the backbone chapter glues about the architecture experiment: its provenance, the
    length rule's reading of each network's curve, and the paper's three statements, each
    answered from the paired intervals ("held", "did not hold", "not decided")."""
    from .table1 import course_rows
    nets, comp = result["networks"], comparisons(result)
    ref_key = next(iter(nets))
    ref = nets[ref_key]
    vgg = [k for k in nets if nets[k]["backbone"].startswith("vgg16")]
    smaller = [k for k in nets if k != ref_key and k not in vgg and nets[k]["parameters"] < ref["parameters"]]
    out: dict[str, Any] = {"arch_when": f"{result['time']} on {result['cpu']}",
                           "arch_command": result.get("command", "lossless experiment architectures --record"),
                           "arch_epochs": result["epochs"], "arch_seeds": result["seeds"],
                           "arch_wall": (result.get("wall_seconds") or float("nan")) / 60,
                           "arch_reference": ref["network"], "arch_long": "the main line's length"
                           if result["epochs"] >= cfg["ssl_epochs"] else "shorter than the main line"}
    histories = {n["network"]: n["history"] for n in nets.values() if n.get("history")}
    courses = course_rows(histories, {}) if histories else []
    out.update(arch_curves=len(courses), arch_rising=sum(r["the curve"] != "flattened" for r in courses),
               arch_past=min((r["since epoch 1 (points)"] for r in courses), default=float("nan")))
    if vgg:
        c = comp[vgg[0]]["finetune"]
        out.update(arch_vgg=nets[vgg[0]]["network"], arch_vgg_verdict=c.verdict(),
                   arch_vgg_held="held" if c.kind() is Verdict.NO_EFFECT else
                   "did not hold" if c.kind() in (Verdict.GAIN, Verdict.LOSS) else "not decided")
    else:
        out.update(arch_vgg="no VGG-16", arch_vgg_verdict="not run", arch_vgg_held="not decided")
    capped = [comp[k]["finetune"].kind() is Verdict.LOSS for k in smaller]
    out.update(arch_smaller=len(smaller), arch_capped=sum(capped),
               arch_capped_held="held" if smaller and all(capped) else "did not hold")
    lower = total = 0
    for k in smaller:
        changes = [round_change(nets[k], r["round"]) for r in nets[k]["summary"]["rounds"]]
        lower += sum(c.kind() is Verdict.LOSS for c in changes)
        total += len(changes)
    out.update(arch_rounds_lower=lower, arch_rounds=total,
               arch_rounds_held="held" if total and lower == total else "did not hold")
    return out
