"""``lossless book``: run the chapters with papermill, then build the HTML book from the results.

The chapters are MyST Markdown notebooks in ``book/`` (jupytext). For a profile and parameters,
each chapter in ``_toc.yml`` order is converted to a notebook and executed by papermill into
``runs/book-{profile}-{hash}/executed/``, outside the sources, so papermill's injected cell never
reaches a ``.md`` file. A chapter whose source, profile and parameters have not changed since
its last successful run is skipped. Then a staging folder (``site/``) gets the configuration,
the executed notebooks and the plain pages, and Jupyter Book builds it with execution off and
warnings as errors.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import yaml

from . import runs
from .errors import LosslessError, disk_errors

ROOT = Path(__file__).resolve().parent.parent
RECORDS = ROOT / "benchmarks" / "results"
PACKAGE = Path(__file__).resolve().parent


def package_digest(folder: Path | None = None) -> str:
    """SHA-1 of the package's code and profiles (every ``*.py`` and ``*.yaml`` under it, with
    their paths): a chapter's output depends on the functions it calls as much as on its source."""
    folder = Path(folder or PACKAGE)
    h = hashlib.sha1()
    for f in sorted(p for p in folder.rglob("*") if p.suffix in (".py", ".yaml") and "__pycache__" not in p.parts):
        h.update(str(f.relative_to(folder)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def write_record(result: dict, name: str, profile: str, out: str | Path | None = None,
                 arrays: Mapping[str, Any] | None = None) -> Path:
    """Save an experiment's result as the record a chapter shows when its rerun would not fit the
    book's time budget: ``benchmarks/results/<name>-<profile>.json`` (or ``out``), with the
    processor (its bf16 kernels shift the last digits) and the time it finished. Run folders
    are kept relative to the runs root (``runs.portable``): a record names its runs, it does
    not point into the maker's disk."""
    from .bench import cpu_name
    path = Path(out) if out else RECORDS / f"{name}-{profile}.json"
    result = {**runs.portable(result), "cpu": cpu_name(mark_isa=True),
              "time": time.strftime("%Y-%m-%d %H:%M")}
    if arrays is not None:  # arrays a chapter's cell needs (a network's outputs): an .npz beside it
        import numpy as np
        tmp = path.with_name(f".{path.stem}.tmp.npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(tmp, **arrays)
        tmp.replace(path.with_suffix(".npz"))
    runs.write_json(path, result)
    return path


def read_record_arrays(name: str, profile: str) -> dict | None:
    """The arrays ``write_record`` kept beside the record ``name`` on ``profile`` (its ``.npz``),
    or None when there are none."""
    import numpy as np
    path = RECORDS / f"{name}-{profile}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError) as exc:
        raise LosslessError(f"{path}: not a readable record ({exc}); restore it with git checkout, or make "
                            f"it again with `lossless experiment {name} --profile {profile} --record`") from None


def read_record(name: str, profile: str, remake: str | None = None) -> dict | None:
    """The record ``write_record`` made for ``name`` on ``profile``, or None when there is none.
    ``remake``: the command that makes it, where it is not ``lossless experiment <name>``."""
    path = RECORDS / f"{name}-{profile}.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LosslessError(f"{path}: not a readable record ({exc}); restore it with git checkout, or "
                            f"make it again with `{remake or f'lossless experiment {name} --profile {profile}'}`") from None


GLUED_WORDS = 12  # a glued string longer than this is a sentence: it belongs in the markdown


def words(text: str) -> int:
    """The words of a glued string, as a reader counts them: tokens with a letter, leaving out a
    command's options, settings and paths (``--seeds``, ``ssl_epochs=18``, ``runs/x``) and numbers."""
    return sum(1 for t in text.split() if any(ch.isalpha() for ch in t) and not t.startswith("-")
               and "=" not in t and "/" not in t)


def glue_all(values: Mapping[str, Any]) -> None:
    """Glue a chapter's named numbers and short words for its prose (``{glue:text}`name:.2f```),
    without showing them. A string of more than :data:`GLUED_WORDS` words is refused: English
    is written in the chapter's markdown, and a glued value fills a gap in it."""
    from myst_nb import glue
    long = {k: v for k, v in values.items() if isinstance(v, str) and words(v) > GLUED_WORDS}
    if long:
        key, text = next(iter(long.items()))
        raise ValueError(f"glue_all: {key!r} is {words(text)} words ({text[:60]!r}...); glue numbers and "
                         f"short words (at most {GLUED_WORDS}), and write the sentence in the markdown")
    for key, value in values.items():
        # a numpy scalar's text is "np.float64(0.79)", which {glue:text}`key:.2f` cannot format
        glue(key, value.item() if hasattr(value, "item") and not isinstance(value, str) else value,
             display=False)


def read_records(prefix: str, profile: str) -> list[dict]:
    """Every record ``<prefix>...-<profile>.json`` (e.g. the claims at other FixMatch lengths,
    ``claims-fm15-cpu.json``), in the order of their names."""
    tail = f"-{profile}.json"
    return [read_record(p.name[:-len(tail)], profile) for p in sorted(RECORDS.glob(f"{prefix}*{tail}"))]


def record_backbone(rec: Mapping[str, Any] | None, cfg: Mapping[str, Any]) -> str:
    """Whether a record's runs started from this profile's pretrained backbone: "" when they did
    (or the record names none), otherwise a clause for the sentence that cites the record,
    naming both runs: a profile whose pretraining settings changed after the record was made
    leaves its figures describing the older backbone until it is made again."""
    run = ((rec or {}).get("pretraining") or {}).get("run")
    if not run:
        return ""
    from .pretrain import pretrain_dir
    ours = pretrain_dir(cfg).name
    if Path(run).name == ours:
        return ""
    return (f"; made with an earlier backbone ({Path(run).name}; this profile's is now {ours}), "
            "so its figures describe that backbone until the record is made again")


def toc_files(root: Path = ROOT) -> list[str]:
    """Document paths of ``_toc.yml`` in reading order (``book/intro``, ``book/data``, ...)."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(entries):
        for e in entries or []:
            if "file" in e:
                files.append(e["file"])
            walk(e.get("sections"))
            for part in e.get("parts", []):
                walk(part.get("chapters"))
    walk(toc.get("chapters"))
    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    return files


def is_notebook(md: Path) -> bool:
    """A MyST page is a notebook when its front matter has a kernelspec (jupytext)."""
    text = md.read_text()
    if not text.startswith("---"):
        return False
    front = text.split("---", 2)[1]
    return "kernelspec:" in front


def chapter_notebooks(root: Path = ROOT) -> list[Path]:
    return [root / f"{f}.md" for f in toc_files(root) if (root / f"{f}.md").is_file() and is_notebook(root / f"{f}.md")]


def chapter_parameters(root: Path = ROOT) -> dict[str, dict]:
    """The variables that chapters declare in their ``parameters`` cell, beyond ``profile`` and the
    configuration's own keys: ``{name: {"default": value, "chapters": [...]}}`` (the results
    chapter's ``seeds``, say). Read from the source, so a new chapter parameter needs no registry."""
    found: dict[str, dict] = {}
    for md in chapter_notebooks(root):
        for name, value in declared_defaults(md).items():
            if name != "profile":
                found.setdefault(name, {"default": value, "chapters": []})["chapters"].append(md.stem)
    return found


def declared_defaults(md: Path) -> dict[str, Any]:
    """The values a chapter's ``parameters`` cell assigns (``profile`` included)."""
    import ast

    import jupytext
    out = {}
    for cell in jupytext.read(md).cells:
        if "parameters" in cell.metadata.get("tags", []):
            for node in ast.parse(cell.source).body:
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    out[node.targets[0].id] = ast.literal_eval(node.value)
    return out


def injected(md: Path, profile: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """What papermill injects into a chapter: only the values that differ from the chapter's own
    ``parameters`` cell. The rendered page then shows an "injected-parameters" cell exactly when
    the build changed something, and that cell says what; a default build shows the reader the
    chapter as written, not a second ``profile = "cpu"``. A chapter parameter that this chapter
    does not declare (another chapter's seed count) is not injected here."""
    from . import config
    defaults = declared_defaults(md)
    mine = {k: v for k, v in params.items() if k in config.PARAMETERS or k in defaults}
    return {k: v for k, v in {"profile": profile, **mine}.items() if k not in defaults or defaults[k] != v}


def check_params(profile: str, params: Mapping[str, Any], root: Path = ROOT) -> dict[str, Any]:
    """``-p`` parameters of ``lossless book``, typed and checked before any chapter runs: a
    configuration parameter by its domain (with the profile's other values), a chapter's own
    parameter by the type of the value its ``parameters`` cell declares. Returns them typed."""
    from . import config
    declared = chapter_parameters(root)
    typed, for_config = {}, {}
    for key, value in params.items():
        if key in config.PARAMETERS:
            for_config[key] = value
        elif key in declared:
            d = declared[key]
            typed[key] = config.coerce_like(key, value, d["default"], "-p",
                                            f"declared by the chapter(s) {', '.join(d['chapters'])}")
        else:
            raise LosslessError(
                f"-p {key}: unknown parameter; chapter parameters: {', '.join(sorted(declared)) or 'none'}; "
                f"configuration parameters: {', '.join(k for k in config.PARAMETERS if k != 'profile')}")
    cfg = config.load_profile(profile, for_config)
    typed.update({k: cfg[k] for k in for_config})
    return typed


def book_dir(profile: str, params: Mapping[str, Any], root: Path = ROOT) -> Path:
    """``{runs root}/book-{profile}-{hash of the parameters}``: the runs root of every other run
    folder (``runs_dir``, else ``$LOSSLESS_RUNS``, else ``./runs``), so one rule places them all."""
    from . import config, runs
    cfg = config.load_profile(profile, {k: v for k, v in params.items() if k in config.PARAMETERS})
    digest = hashlib.sha1(json.dumps(dict(params), sort_keys=True, default=str).encode()).hexdigest()[:8]
    return runs.runs_root(cfg) / f"book-{Path(str(profile)).stem}-{digest}"


def records_read(text: str, profile: str) -> list[Path]:
    """The committed records a chapter's source reads for ``profile``: those it names to
    :func:`read_record` (``"screen-round2"``) or by file name (``train-cpu.json``), and the
    claims record when it calls ``book_run``."""
    out = []
    for f in sorted(RECORDS.glob(f"*-{profile}.json")):
        name = f.stem[: -len(profile) - 1]
        if f.name in text or f'"{name}"' in text or (name == "claims" and "book_run(" in text):
            out.append(f)
    return out


def _key(md: Path, profile: str, params: Mapping[str, Any], before: str = "") -> str:
    """A chapter's cache key: its source, the package's code (:func:`package_digest`), the
    records it reads (:func:`records_read`: a remade record reruns the chapters that show it), the profile
    and parameters, and ``before``: the key and
    the time record of the chapter before it. A chapter therefore reruns whenever the one before
    it changed or ran again, and so on down the book: later chapters load the earlier ones' runs,
    and the performance appendix reports their times."""
    h = hashlib.sha1(md.read_bytes())
    h.update(package_digest().encode())
    for f in records_read(md.read_text(), profile):
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    h.update(json.dumps({"profile": profile, **params}, sort_keys=True, default=str).encode())
    h.update(before.encode())
    return h.hexdigest()


def write_notebook(md: Path, out: Path, profile: str | None = None, params: Mapping[str, Any] | None = None) -> Path:
    """The chapter as an ``.ipynb`` (parameters injected by papermill when ``profile`` is given)."""
    import jupytext
    out.parent.mkdir(parents=True, exist_ok=True)
    jupytext.write(jupytext.read(md), out)
    if profile is not None:
        import nbformat
        from papermill.iorw import load_notebook_node
        from papermill.parameterize import parameterize_notebook
        values = {"profile": profile, **injected(md, profile, params or {})}
        nb = parameterize_notebook(load_notebook_node(str(out)), values)
        nbformat.write(nb, str(out))
    return out


def write_parameterised(out: Path, profile: str, params: Mapping[str, Any] | None = None,
                        root: Path = ROOT) -> list[Path]:
    """Every chapter as a notebook with ``profile`` injected (what nbval runs)."""
    params = with_profile_defaults(profile, params, root)
    if out.exists():
        shutil.rmtree(out)
    return [write_notebook(md, out / f"{md.stem}.ipynb", profile, params) for md in chapter_notebooks(root)]


def run_chapters(profile: str, params: Mapping[str, Any] | None = None, root: Path = ROOT,
                 out_dir: Path | None = None, progress: bool = True) -> list[dict]:
    """Execute every chapter notebook in order; returns one record per chapter (ran or skipped)."""
    params = dict(params or {})
    out_dir = out_dir or book_dir(profile, params, root)
    # the chapters' stages put their run folders beside the book's folder, wherever the command ran
    # (and a chapter that reports on the build itself, the performance appendix, finds it)
    saved = {k: os.environ.get(k) for k in ("LOSSLESS_RUNS", "LOSSLESS_BOOK")}
    os.environ.update(LOSSLESS_RUNS=str(out_dir.parent), LOSSLESS_BOOK=str(out_dir))
    try:
        return _run_each(profile, params, root, out_dir, progress)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run_each(profile: str, params: dict, root: Path, out_dir: Path, progress: bool) -> list[dict]:
    with disk_errors(out_dir):  # a full disk: one message naming the file, finished chapters kept
        return _run_each_chapter(profile, params, root, out_dir, progress)


def _run_each_chapter(profile: str, params: dict, root: Path, out_dir: Path, progress: bool) -> list[dict]:
    import papermill
    records, before = [], ""
    for md in chapter_notebooks(root):
        src = write_notebook(md, out_dir / "src" / f"{md.stem}.ipynb")
        executed = out_dir / "executed" / f"{md.stem}.ipynb"
        stamp, timing = executed.with_suffix(".key"), executed.with_suffix(".time.json")
        key = _key(md, profile, params, before)
        if is_current(executed, key):
            records.append({"chapter": md.stem, "status": "skipped (unchanged)"})
            before = key + (timing.read_text() if timing.is_file() else "")
            continue
        print(f"lossless book: running {md.relative_to(root)} ({profile})", file=sys.stderr)
        t0 = time.perf_counter()
        tmp = executed.with_name(f".{executed.stem}.running.ipynb")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        try:
            # with progress on, the kernel's stderr (the engine's progress bars, one line per
            # epoch) streams to this terminal as it is written, so a chapter that trains for
            # minutes shows how far it is; papermill's own cell bar would share the line, so it is off
            papermill.execute_notebook(str(src), str(tmp), parameters=injected(md, profile, params),
                                       kernel_name="python3", cwd=str(root), progress_bar=False,
                                       log_output=False, stderr_file=sys.stderr if progress else None)
        except papermill.PapermillExecutionError as exc:
            raise LosslessError(f"chapter {md.relative_to(root)} failed in cell {exc.exec_count} "
                                f"({exc.ename}: {exc.evalue}); the partly executed notebook is {tmp}") from None
        strip_stderr(tmp)
        os.replace(tmp, executed)
        stamp.write_text(key)
        seconds = round(time.perf_counter() - t0, 1)
        write_time(timing, md.stem, seconds)
        records.append({"chapter": md.stem, "status": "ran", "seconds": seconds})
        before = key + timing.read_text()
    return records


def is_current(executed: Path, key: str) -> bool:
    """Whether the executed chapter ``executed`` was made under cache key ``key`` (its ``.key``)."""
    stamp = executed.with_suffix(".key")
    return executed.is_file() and stamp.is_file() and stamp.read_text() == key


def write_time(timing: Path, chapter: str, seconds: float) -> None:
    """A chapter's time record (``.time.json``): what :func:`chapter_times` reads."""
    runs.write_json(timing, {"chapter": chapter, "seconds": round(seconds, 1), **machine(), "ns": time.time_ns()})


def machine() -> dict:
    """Where and when a chapter ran: the processor's model name, cores, torch, the date."""
    import datetime

    import torch

    from .bench import cpu_name
    return {"processor": cpu_name(mark_isa=True), "cores": os.cpu_count(), "torch": torch.__version__,
            "finished": datetime.datetime.now().isoformat(timespec="seconds")}


def chapter_times(folder: Path | str | None = None, root: Path = ROOT, before: str | None = None) -> list[dict]:
    """The wall time of each chapter of a book build, in reading order, from the ``.time.json``
    records ``lossless book`` writes as each chapter finishes (a chapter skipped because it was
    unchanged keeps the time of the run that made it). ``folder`` defaults to the book being
    built (``$LOSSLESS_BOOK``, set while its chapters run); none: an empty list. ``before``: only
    the chapters that come before this one (a chapter asking while it runs would otherwise count
    itself, and the chapters after it, from the build before)."""
    folder = folder or os.environ.get("LOSSLESS_BOOK")
    if not folder:
        return []
    rows = []
    for md in chapter_notebooks(root):
        if md.stem == before:
            break
        f = Path(folder) / "executed" / f"{md.stem}.time.json"
        if f.is_file():
            rows.append(json.loads(f.read_text()))
    return rows


def strip_stderr(notebook: Path) -> int:
    """Remove the kernel's stderr from an executed notebook (the progress bars, one line an epoch,
    and library warnings): they streamed to the terminal while the chapter ran, the rendered page
    hides them (``nb_output_stderr: remove``), and a downloaded notebook should not carry
    thousands of bar lines. Returns how many outputs were removed."""
    import nbformat
    nb = nbformat.read(notebook, as_version=4)
    removed = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = [o for o in cell.outputs if not (o.output_type == "stream" and o.get("name") == "stderr")]
        removed += len(cell.outputs) - len(kept)
        cell.outputs = kept
    nbformat.write(nb, notebook)
    return removed


def stage_site(out_dir: Path, root: Path = ROOT) -> Path:
    """A folder Jupyter Book can build: config, toc, executed notebooks and the plain pages."""
    site = out_dir / "site"
    if site.exists():
        shutil.rmtree(site)
    (site / "book").mkdir(parents=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(root / name, site / name)
    for f in toc_files(root):
        md = root / f"{f}.md"
        if md.is_file() and is_notebook(md):
            executed = out_dir / "executed" / f"{md.stem}.ipynb"
            if not executed.is_file():
                raise LosslessError(f"{executed} is missing: run the chapters first (lossless book)")
            shutil.copy(executed, site / f"{f}.ipynb")
        elif md.is_file():
            shutil.copy(md, site / f"{f}.md")
    if (root / "book" / "_static").is_dir():  # the book's stylesheet (Jupyter Book loads _static/*.css)
        shutil.copytree(root / "book" / "_static", site / "_static")
    _ship_mathjax(site, root)
    return site


MATHJAX = Path(".cache") / "npm" / "node_modules" / "mathjax" / "es5"


def _ship_mathjax(site: Path, root: Path) -> None:
    """Math renders offline: MathJax 3 (npm package ``mathjax@3``, installed by ``make setup``)
    goes to the output's ``_static/mathjax/`` through ``html_extra_path``; the site's
    ``_static/`` holds only the stylesheet, so Jupyter Book does not load the script a second time."""
    src = root / MATHJAX
    if not (src / "tex-mml-chtml.js").is_file():
        raise LosslessError(f"{src / 'tex-mml-chtml.js'} is missing: run `make setup` (it installs the npm "
                            f"package mathjax@3 into .cache/npm) so that math renders without a CDN")
    dest = site / "_extra" / "_static" / "mathjax"
    (dest / "output" / "chtml").mkdir(parents=True)
    shutil.copy(src / "tex-mml-chtml.js", dest / "tex-mml-chtml.js")
    shutil.copytree(src / "output" / "chtml" / "fonts", dest / "output" / "chtml" / "fonts")
    cfg = yaml.safe_load((site / "_config.yml").read_text())
    sphinx_cfg = cfg.setdefault("sphinx", {}).setdefault("config", {})
    sphinx_cfg["html_extra_path"] = ["_extra"]
    sphinx_cfg["mathjax_path"] = "mathjax/tex-mml-chtml.js"
    (site / "_config.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def build_html(out_dir: Path, root: Path = ROOT, warnings_are_errors: bool = True) -> Path:
    with disk_errors(out_dir / "site"):
        site = stage_site(out_dir, root)
    cmd = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(site), "--builder", "html"]
    if warnings_are_errors:
        cmd += ["-W", "-n", "--keep-going"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise LosslessError(f"jupyter-book build of {site} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return site / "_build" / "html"


def with_profile_defaults(profile: str, params: Mapping[str, Any] | None, root: Path = ROOT) -> dict[str, Any]:
    """``params`` over the profile's ``chapters:`` defaults (``config.chapter_defaults``), each
    default checked as ``-p`` checks a value (an unknown name or a wrong type names the profile)."""
    from . import config
    defaults = config.chapter_defaults(profile)
    try:
        typed = check_params(profile, defaults, root) if defaults else {}
    except LosslessError as exc:
        raise LosslessError(f"profile {profile}, 'chapters:' -> {exc}") from None
    return {**typed, **dict(params or {})}


def build_book(profile: str, params: Mapping[str, Any] | None = None, root: Path = ROOT,
               html: bool = True, progress: bool = True) -> dict:
    params = with_profile_defaults(profile, params, root)
    out_dir = book_dir(profile, params, root)
    t0 = time.perf_counter()
    chapters = run_chapters(profile, params, root, out_dir, progress)
    result = {"profile": profile, "params": params, "folder": str(out_dir), "chapters": chapters,
              "execute_seconds": round(time.perf_counter() - t0, 1)}
    if html:
        t1 = time.perf_counter()
        result["html"] = str(build_html(out_dir, root) / "index.html")
        result["build_seconds"] = round(time.perf_counter() - t1, 1)
    return result
