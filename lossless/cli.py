"""The ``lossless`` command (also ``python -m lossless``).

Every subcommand takes ``--profile NAME`` and trailing ``key=value`` overrides, reads one
configuration through :mod:`lossless.config`, and ends by printing one JSON line on stdout
(progress bars and messages go to stderr). Errors meant for the user exit with status 2 and a
one-line message that names the file or value and the fix.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from . import config
from .errors import LosslessError


def _profile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default=config.DEFAULT_PROFILE,
                   help=f"one of {', '.join(config.available_profiles())} or a YAML file (default: %(default)s)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override a profile's parameter")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _config(args: argparse.Namespace, **flags) -> config.Config:
    """The profile, then ``key=value`` overrides, then explicit flags (those that were given)."""
    overrides = config.parse_overrides(args.overrides)
    overrides.update({k: v for k, v in flags.items() if v is not None})
    return config.load_profile(args.profile, overrides)


def cmd_data_check(args: argparse.Namespace) -> dict:
    from . import data
    cfg = _config(args, dataset=args.dataset, data_root=args.root, seed=args.seed,
                  labels_per_class=args.labels_per_class, val_per_class=args.val_per_class)
    return data.load_split(cfg, progress=not args.quiet, verify=args.verify).summary()


def cmd_pretrain(args: argparse.Namespace) -> dict:
    from .pretrain import pretrain
    cfg = _config(args, ssl_method=args.method)
    if args.quiet:
        cfg["progress"] = False
    return pretrain(cfg)


def cmd_bench(args: argparse.Namespace) -> dict:
    from .bench import run_methods_bench, run_train_bench
    if args.method:
        from . import methods
        names = list(methods.METHODS) if args.method == "all" else [methods.get(args.method).name]
        result = run_methods_bench(args.device, args.out, args.quick, names, args.profile)
        return {"written_to": result["written_to"], "records": [
            {k: r.get(k) for k in ("method", "img_per_s", "gflop_per_img", "mfu", "vs_barlow")}
            for r in result["records"]]}
    result = run_train_bench(args.device, args.out, args.quick, args.models)
    return {"written_to": result["written_to"], "records": [
        {k: r.get(k) for k in ("model", "resolution", "precision", "pipeline", "img_per_s", "mfu",
                               "speedup_vs_authors")} for r in result["records"]]}


def cmd_book(args: argparse.Namespace) -> dict:
    from .book import build_book
    from .book import check_params
    params = {}
    for key, value in args.param or []:
        params.update(config.parse_overrides([f"{key}={value}"]))
    # unknown names, bad types and values out of their domain fail here, before any chapter runs
    params = check_params(args.profile, params)
    if params.get("runs_dir"):  # the chapters run with the project as their folder: pass it absolute
        params["runs_dir"] = str(Path(params["runs_dir"]).expanduser().absolute())
    if args.notebooks_only:
        from .book import write_parameterised
        paths = write_parameterised(Path(args.notebooks_only), args.profile, params)
        return {"notebooks": [str(p) for p in paths]}
    return build_book(args.profile, params, html=not args.no_html, progress=not args.quiet)


def cmd_finetune(args: argparse.Namespace) -> dict:
    from .finetune import finetune
    cfg = _config(args)
    cfg["progress"] = cfg["progress"] and not args.quiet
    r = finetune(cfg, args.init)
    return {k: v for k, v in r.items() if not k.endswith("_report")}


def cmd_fixmatch(args: argparse.Namespace) -> dict:
    from .fixmatch import fixmatch
    cfg = _config(args)
    cfg["progress"] = cfg["progress"] and not args.quiet
    return {k: v for k, v in fixmatch(cfg).items() if not k.endswith("_report")}


def cmd_pseudo(args: argparse.Namespace) -> dict:
    from .pseudo import pseudo_label
    cfg = _config(args, pl_rule=args.rule)
    cfg["progress"] = cfg["progress"] and not args.quiet
    return pseudo_label(cfg)


def cmd_evaluate(args: argparse.Namespace) -> dict:
    from . import runs as runs_mod
    if not Path(args.run).is_dir():
        raise LosslessError(f"{args.run} is not a run folder (no such directory); give a runs/finetune-* or "
                            f"runs/pseudo-*/roundN folder")
    result = runs_mod.find_result(Path(args.run))
    if result is None:
        raise LosslessError(f"{args.run} has no result.json: the stage has not finished")
    return {k: v for k, v in result.items() if not k.endswith("_report")} | {
        f"{n}_ece": result[f"{n}_report"]["calibration"]["ece"] for n in ("val", "test") if f"{n}_report" in result}


# the experiment subcommand's flags (besides --seeds, --profile and --quiet), as experiment_command writes them
EXPERIMENT_FLAGS = (("strategies", "--strategies"), ("recipes", "--recipes"), ("screen_epochs", "--screen-epochs"),
                    ("pilot_seeds", "--pilot-seeds"), ("finalists", "--finalists"), ("out", "--out"),
                    ("record", "--record"), ("all_rules", "--all-rules"), ("fixmatch_seeds", "--fixmatch-seeds"))


def experiment_command(args: argparse.Namespace, seeds: int) -> str:
    """The command that remakes an experiment's record, as its record keeps it: the experiment,
    the profile, the seeds it ran, every flag given away from its default, the key=value
    overrides (not ``--quiet``, which changes no result)."""
    import shlex
    default = vars(parse_args(["experiment", args.name]))
    parts = ["lossless", "experiment", args.name, "--profile", args.profile, "--seeds", str(seeds)]
    for dest, flag in EXPERIMENT_FLAGS:
        value = getattr(args, dest)
        if value != default[dest]:
            parts += [flag] if value is True else [flag, str(value)]
    return shlex.join(parts + list(args.overrides or []))


def cmd_experiment(args: argparse.Namespace) -> dict:
    from .book import write_record
    cfg = _config(args)
    cfg["progress"] = cfg["progress"] and not args.quiet
    seeds = {} if args.seeds is None else {"seeds": args.seeds}  # else each experiment's own default
    if args.name == "active":
        from .experiments import active as ex
        strategies = {} if args.strategies is None else {"strategies": ex.check_strategies(args.strategies.split(","))}
        r = ex.experiment(cfg, **seeds, **strategies)
        if args.record:  # the record a chapter shows: the paper's intersection has its own
            name = "active-methods" if ex.ACROSS in r["strategies"] else "active"
            r["command"] = experiment_command(args, len(r["seeds"]))
            # the chapters read the rounds; the requested images stay in the run folder's request files
            slim = {**r, "seeds": [{**s, "strategies": {k: {"rounds": v["rounds"]} for k, v in s["strategies"].items()}}
                                   for s in r["seeds"]]}
            r["written_to"] = str(write_record(slim, name, cfg["profile"], args.out))
        return {"run": r["run"], "written_to": r.get("written_to"), "seeds": len(r["seeds"]), "budget": r["budget"],
                "rounds": r["rounds"],
                "minus_random": ex.difference_rows(r)}
    if args.name == "table1":
        from .experiments import table1 as t1
        r = t1.compare(cfg, **seeds)
        return {"epochs": r["epochs"], "table1": t1.table1(r),
                "barlow_minus_others": [row for m in ("finetune", "linear_probe", "knn_probe")
                                        for row in t1.best_rows(r, m)]}
    if args.name == "screen":
        from .experiments import screen as sc
        recipes = None if args.recipes is None else sc.chosen_recipes(args.recipes.split(","))
        r = sc.screen(cfg, recipes, **seeds, epochs=args.screen_epochs, pilot_seeds=args.pilot_seeds,
                      finalists=args.finalists)
        r["command"] = experiment_command(args, r["seeds"])
        out = write_record(r, "screen", cfg["profile"], args.out)
        return {"written_to": str(out), "best_by_validation": r["best_by_validation"], "rows": sc.rows(r)}
    if args.name == "architectures":
        from .experiments import architectures as ar
        r = ar.architectures(cfg, **seeds)
        r["command"] = experiment_command(args, r["seeds"])
        out = write_record(r, "architectures", cfg["profile"], args.out)
        return {"written_to": str(out), "rows": ar.rows(r), "rounds": ar.round_rows(r)}
    if args.name == "section4":
        from .experiments import ensembles as en
        from .experiments.table1 import course as t1_course
        r = en.section4(cfg, **seeds)
        r["command"] = experiment_command(args, r["seeds"])
        out = write_record(r, "section4", cfg["profile"], args.out)
        return {"written_to": str(out), "table1": r["ensembles"]["table1"],
                "courses": {k: t1_course(h) for k, h in r["histories"].items()}}
    if args.name == "ensembles":
        from .experiments import ensembles as en
        r = en.ensembles(cfg, **seeds)
        if args.record:  # the first labelled set's members and outputs, for the chapter's method cell
            kept, arrays = en.members_record(r)
            kept["command"] = experiment_command(args, len(r["seeds"]))
            r["written_to"] = str(write_record(kept, "ensembles", cfg["profile"], args.out, arrays=arrays))
        return {"written_to": r.get("written_to"), "models": r["models"], "summary": r["summary"],
                "comparisons": en.difference_rows(r), "overlap_val": en.overlap_rows(r, "val"),
                "bounds": en.bound_rows(r)}
    from .experiments.claims import claims, difference_rows
    r = claims(cfg, **seeds, all_rules=args.all_rules,
               fixmatch_seeds=args.fixmatch_seeds)
    if args.record:  # the record the results chapter shows beside its own, shorter run
        r["command"] = experiment_command(args, len(r["seeds"]))
        r["written_to"] = str(write_record({k: v for k, v in r.items() if k != "written_to"}, "claims",
                                           cfg["profile"], args.out))
    return {"written_to": r["written_to"], "summary": r["summary"], "comparisons": difference_rows(r)}


def cmd_select(args: argparse.Namespace) -> dict:
    from .active import select_round
    cfg = _config(args)
    cfg["progress"] = cfg["progress"] and not args.quiet
    return select_round(cfg, args.strategy, args.budget or cfg["al_budget"], Path(args.out) if args.out else None,
                        [Path(p) for p in args.previous or []])


def cmd_answer(args: argparse.Namespace) -> dict:
    from .active import answer_round
    cfg = _config(args)
    cfg["progress"] = cfg["progress"] and not args.quiet
    return answer_round(cfg, Path(args.requests), [Path(p) for p in args.previous or []],
                        Path(args.labels) if args.labels else None)


def cmd_bench_kmeans(args: argparse.Namespace) -> dict:
    from .bench import run_kmeans_bench
    return run_kmeans_bench(args.out, args.points, args.dim, args.clusters)


def cmd_bench_score(args: argparse.Namespace) -> dict:
    from .bench import run_score_bench
    return run_score_bench(args.out)


def cmd_config(args: argparse.Namespace) -> dict:
    if args.list:
        return {k: {"default": d, "help": h, "allowed": dom.allowed} for k, (d, h, dom) in config.PARAMETERS.items()}
    return dict(_config(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lossless", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    data_p = sub.add_parser("data", help="load, validate and cache a dataset")
    data_sub = data_p.add_subparsers(dest="data_command", required=True)
    check = data_sub.add_parser("check", help="load + validate + cache; print split sizes as JSON")
    check.add_argument("--dataset", help="synthetic | fashion-mnist | stl10 | nyu-dl21 | imagefolder")
    check.add_argument("--root", help="the dataset's folder (data_root)")
    check.add_argument("--seed", type=int)
    check.add_argument("--labels-per-class", type=int)
    check.add_argument("--val-per-class", type=int)
    check.add_argument("--verify", action="store_true",
                       help="hash the cached arrays against their checksums (always done for caches up to 2 GB)")
    _profile_args(check)
    check.set_defaults(func=cmd_data_check)

    pre = sub.add_parser("pretrain", help="self-supervised pretraining (Barlow Twins or a baseline); resumes a stopped run")
    pre.add_argument("--method", default=None, help="barlow | simclr | byol | swav (default: the profile's ssl_method)")
    _profile_args(pre)
    pre.set_defaults(func=cmd_pretrain)

    ft = sub.add_parser("finetune", help="fine-tune the classifier (section 3.4) or train the supervised baseline")
    ft.add_argument("--init", default="barlow", choices=["barlow", "random"])
    _profile_args(ft)
    ft.set_defaults(func=cmd_finetune)

    fm = sub.add_parser("fixmatch", help="the FixMatch baseline (random init, labelled + unlabelled images); "
                                         "resumes a stopped run")
    _profile_args(fm)
    fm.set_defaults(func=cmd_fixmatch)

    pl = sub.add_parser("pseudo-label", help="pseudo-labelling rounds (section 3.5)")
    pl.add_argument("--rule", default=None, choices=["global", "balanced", "threshold", "gradual", "none"],
                    help="selection rule (default: pl_rule); none is the control: the rounds without pseudo-labels")
    _profile_args(pl)
    pl.set_defaults(func=cmd_pseudo)

    ev = sub.add_parser("evaluate", help="accuracy and calibration of a finished classifier run")
    ev.add_argument("run", help="a runs/finetune-* or runs/pseudo-*/roundN folder")
    ev.set_defaults(func=cmd_evaluate)

    ex = sub.add_parser("experiment", help="an experiment over seeds: claims (sections 3.4, 3.5, 5), active "
                                           "(section 3.6: label-request rules against random), table1 "
                                           "(section 4: compare_methods for compare_epochs each) or ensembles "
                                           "(section 4: ensemble_models combined; the overlap analysis), section4 (both, "
                                           "written as the record the chapters show) or screen "
                                           "(the backbone study: recipes at the main line's length, the best on more seeds) or architectures (section 4: "
                                           "arch_networks at compare_epochs; forgetting in the rounds)")
    ex.add_argument("name", choices=["claims", "active", "table1", "ensembles", "section4", "screen",
                                     "architectures"])
    ex.add_argument("--seeds", type=int, default=None,
                    help="seeds (default: the experiment function's own default, e.g. "
                         "lossless.experiments.claims.claims's seeds=5)")
    ex.add_argument("--strategies", default=None,
                    help="active: the strategies, comma-separated (default: all but methods-intersection, which "
                         "needs ensemble_models' runs pretrained; random is always among them)")
    ex.add_argument("--recipes", default=None,
                    help="screen: the recipes to run beside the profile's own, comma-separated (default: all)")
    ex.add_argument("--screen-epochs", type=int, default=None,
                    help="screen: pretraining epochs of every recipe (default: the profile's ssl_epochs)")
    ex.add_argument("--pilot-seeds", type=int, default=1,
                    help="screen: seeds every recipe runs on before the finalists are chosen")
    ex.add_argument("--finalists", type=int, default=1,
                    help="screen: recipes (besides the profile's) run on every seed, the best by validation")
    ex.add_argument("--out", default=None,
                    help="screen, architectures, section4, claims or ensembles --record: the record's JSON "
                         "path (default benchmarks/results/<name>-<profile>.json, which the chapters show; "
                         "an ensembles record's outputs go beside it as .npz)")
    ex.add_argument("--record", action="store_true",
                    help="claims, active, ensembles: also write the result as the record the chapters show")
    ex.add_argument("--all-rules", action="store_true",
                    help="claims: also the balanced, threshold and gradual pseudo-label rules and the "
                         "supervised-only control")
    ex.add_argument("--fixmatch-seeds", type=int, default=0,
                    help="claims: FixMatch on the first N seeds (each fm_epochs passes over the pool: "
                         "minutes a seed on a CPU)")
    _profile_args(ex)
    ex.set_defaults(func=cmd_experiment)

    sel = sub.add_parser("select", help="active learning (section 3.6): write a label-request file")
    sel.add_argument("--strategy", default="margin-kmeans", choices=["margin-kmeans", "margin", "kmeans", "random"])
    sel.add_argument("--budget", type=int, default=None, help="number of images to request (default: al_budget)")
    sel.add_argument("--out", help="the request file (default: in runs/active-*/)")
    sel.add_argument("--previous", nargs="*", help="earlier rounds' request files (their images leave the pool)")
    _profile_args(sel)
    sel.set_defaults(func=cmd_select)

    ans = sub.add_parser("answer", help="the oracle: label a request file from labels the training never saw")
    ans.add_argument("requests", help="a request file written by `lossless select`")
    ans.add_argument("--previous", nargs="*", help="earlier rounds' request files (an image asked twice is an error)")
    ans.add_argument("--labels", help="nyu-dl21: a torch tensor of labels for the unlabeled/ folder's images")
    _profile_args(ans)
    ans.set_defaults(func=cmd_answer)

    book = sub.add_parser("book", help="run the chapters with papermill and build the HTML book")
    book.add_argument("--profile", default=config.DEFAULT_PROFILE)
    book.add_argument("-p", "--param", nargs=2, action="append", metavar=("KEY", "VALUE"),
                      help="a parameter for every chapter (papermill's -p)")
    book.add_argument("--no-html", action="store_true", help="only run the chapters")
    book.add_argument("--notebooks-only", metavar="DIR",
                      help="only write the chapters as parameterised notebooks into DIR (for nbval)")
    book.add_argument("--quiet", action="store_true")
    book.set_defaults(func=cmd_book)

    bench = sub.add_parser("bench", help="benchmarks (print figures, write JSON)")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    train = bench_sub.add_parser("train", help="Barlow Twins training-step throughput and MFU")
    train.add_argument("--device", default="auto")
    train.add_argument("--out", default=None, help="JSON path (default benchmarks/results/train-<device>.json)")
    train.add_argument("--quick", action="store_true", help="fewer timed steps")
    train.add_argument("--models", nargs="*", help="only models whose name contains one of these")
    train.add_argument("--method", default=None,
                       help="all | barlow | simclr | byol | swav: compare the self-supervised methods' "
                            "steps on one backbone instead (JSON: benchmarks/results/methods-<device>.json)")
    train.add_argument("--profile", default="cpu", help="with --method: the profile whose backbone and "
                                                        "method settings are measured")
    train.set_defaults(func=cmd_bench)

    sc = bench_sub.add_parser("score", help="pool scoring: throughput vs forward-only, selection memory")
    sc.add_argument("--out", default=None)
    sc.set_defaults(func=cmd_bench_score)

    km = bench_sub.add_parser("kmeans", help="active learning's k-means at the paper's scale (70,000 x 512 -> 800)")
    km.add_argument("--out", default=None)
    km.add_argument("--points", type=int, default=70_000)
    km.add_argument("--dim", type=int, default=512)
    km.add_argument("--clusters", type=int, default=800)
    km.set_defaults(func=cmd_bench_kmeans)

    cfg_p = sub.add_parser("config", help="print the resolved configuration of a profile")
    cfg_p.add_argument("--list", action="store_true", help="list every parameter with its default")
    _profile_args(cfg_p)
    cfg_p.set_defaults(func=cmd_config)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line as ``main`` reads it."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also follow options that come after another positional argument
    # (`lossless answer FILE --labels L --profile cpu seed=3`), where argparse leaves them over
    if extra and hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
        args.overrides = list(args.overrides or []) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    func: Callable[[argparse.Namespace], dict] = args.func
    try:
        result = func(args)
    except LosslessError as exc:
        print(f"lossless: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk or an unwritable folder wherever it strikes: one line
        from .errors import DISK_FULL, disk_full_message, unwritable_message
        if exc.errno in DISK_FULL:
            print(f"lossless: error: {disk_full_message(Path(exc.filename or '.'), exc)}", file=sys.stderr)
            return 2
        message = unwritable_message(exc)
        if message is None:
            raise
        print(f"lossless: error: {message}", file=sys.stderr)
        return 2
    from . import distributed
    if distributed.info().is_main:
        print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
