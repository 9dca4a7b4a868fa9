"""The book: sources and paired notebooks in sync, chapter conventions, and a rendered smoke build
checked in headless Chromium (pages load, show their figures, no raw LaTeX)."""
import ast
import os
import re
import shutil
import subprocess
from pathlib import Path

import jupytext
import pytest

from lossless import book

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = book.chapter_notebooks(ROOT)


def test_every_page_is_in_the_toc():
    listed = {f"{f}.md" for f in book.toc_files(ROOT)}
    on_disk = {str(p.relative_to(ROOT)) for p in (ROOT / "book").glob("*.md")}
    assert on_disk == listed
    assert len(CHAPTERS) >= 3


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.stem)
def test_markdown_and_paired_notebook_are_in_sync(md):
    ipynb = ROOT / "notebooks" / f"{md.stem}.ipynb"
    assert ipynb.is_file(), f"{ipynb} is missing: run `jupytext --sync {md.relative_to(ROOT)}`"
    a, b = jupytext.read(md), jupytext.read(ipynb)
    cells = lambda nb: [(c.cell_type, c.source.strip()) for c in nb.cells]  # noqa: E731
    assert cells(a) == cells(b), f"{md.name} and {ipynb.name} differ: run `jupytext --sync {md.relative_to(ROOT)}`"


def training_loops(source: str) -> list[str]:
    """Loops (for/while, comprehensions) whose body takes a gradient or an optimiser step."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.For, ast.While, ast.ListComp, ast.GeneratorExp, ast.DictComp)):
            calls = {n.func.attr for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
            if calls & {"backward", "step"}:
                found.append(ast.unparse(node)[:60])
    return found


def test_the_convention_finds_a_training_loop_but_allows_one_step():
    assert training_loops("for x, y in batches:\n    loss(x, y).backward()\n    opt.step()")
    assert training_loops("while True:\n    optimizer.step()")
    assert not training_loops("loss.backward()\noptimizer.step()")
    assert not training_loops("def one_step(opt):\n    loss.backward()\n    opt.step()\nfor f in fs:\n    g(f)")


# Each method chapter writes its method's core in a cell and checks it against the package on
# the chapter's data (the asserts run wherever the chapter runs: the smoke book, nbval, make book).
# chapter -> (what the cell writes out, the package's function or stored result inside its assert)
METHOD_CORES = {
    "barlow-twins": [("def barlow_loss", "package"), ("def lars_update", "w.detach()")],
    "classifier": [("def two_rates", "package.named_parameters()")],
    "pseudo-labelling": [("def top_percent", "select_global("), ("def top_percent", 'stored["index"]')],
    "active-learning": [("quota = ", 'view["stored"]'), ("margin = top_two", 'view["margin"]')],
    "ensembles": [("def choose_weights", 'stored["weighted"]["weights"]'), ("def mixture", '["test_accuracy"]')],
    "ssl-methods": [("def nt_xent", "methods.nt_xent("), ("def byol_loss", "methods.byol_loss("),
                    ("def sinkhorn", "package"), ("def swapped_prediction", "package")],
}


def asserted(source: str) -> str:
    """The text of every assert statement and assert_* call of a cell."""
    parts = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assert):
            parts.append(ast.unparse(node))
        elif isinstance(node, ast.Call) and ast.unparse(node.func).split(".")[-1].startswith("assert"):
            parts.append(ast.unparse(node))
    return "\n".join(parts)


@pytest.mark.parametrize("chapter", sorted(METHOD_CORES))
def test_method_chapters_check_their_core_against_the_package(chapter):
    cells = [c.source for c in jupytext.read(ROOT / "book" / f"{chapter}.md").cells if c.cell_type == "code"]
    for written, package in METHOD_CORES[chapter]:
        cell = next((c for c in cells if written in c), None)
        assert cell is not None, f"{chapter}: no cell writes `{written}`"
        checks = asserted(cell)
        names = {n.id for n in ast.walk(ast.parse(checks)) if isinstance(n, ast.Name)} if checks else set()
        local = {d.name for d in ast.walk(ast.parse(cell)) if isinstance(d, ast.FunctionDef)} | {
            t.id for a in ast.walk(ast.parse(cell)) if isinstance(a, ast.Assign) for t in a.targets
            if isinstance(t, ast.Name)}
        assert ast.unparse(ast.parse(package.rstrip("("))) in checks, \
            f"{chapter}: the cell that writes `{written}` does not assert it against `{package}`"
        assert names & local, f"{chapter}: the asserts of `{written}`'s cell compare nothing the cell computed"


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_conventions(md):
    nb = jupytext.read(md)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []) and "profile = " in code[0].source
    assert any(c.cell_type == "markdown" and re.search(r"^## What to try", c.source, re.M) for c in nb.cells)
    for c in code:
        assert "for epoch in" not in c.source and not training_loops(c.source), f"{md.name}: no training loop in a " \
            f"notebook (one step written out to show the method is fine):\n{c.source}"
        # a comparison goes through the one result type: no interval computed or read by hand
        for hand in ("paired_difference(", "mean_interval(", '["paired_differences"]', '["minus_best_single"]',
                     '["minus_reference"]'):
            assert hand not in c.source, f"{md.name}: {hand} in a cell; build a lossless.comparison.Comparison " \
                f"(an experiment's comparison()) and word it with its methods:\n{c.source}"
        # a table shows only as the cell's last expression: one earlier in the cell is lost
        showing = ("tables.show", "comparison.table", "cmp.table")
        body = ast.parse(c.source).body if any(t in c.source for t in showing) else []
        for node in body[:-1]:
            shown = isinstance(node, ast.Expr) and any(t in ast.unparse(node) for t in showing)
            assert not shown, f"{md.name}: tables.show(...) must end its cell, or it is not shown:\n{c.source}"
        if "viz." in c.source and "fig = " in c.source:
            assert c.metadata.get("mystnb", {}).get("figure", {}).get("caption"), f"figure without caption:\n{c.source}"


@pytest.mark.slow
@pytest.mark.render
def test_smoke_book_builds_and_renders(tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: `make setup` installs Debian's chromium")
        pytest.skip("chromium not installed (make setup installs it)")
    result = book.build_book("smoke", {}, ROOT, progress=False)
    html = Path(result["html"]).parent
    for executed in (Path(result["folder"]) / "executed").glob("*.ipynb"):  # the downloadable notebooks
        nb = jupytext.read(executed)
        streams = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "stream"]
        assert not [o for o in streams if o.get("name") == "stderr"], f"{executed.name} keeps stderr (progress bars)"
        # {glue:text} prints a glued string as it is: a backtick in it shows on the page
        glued = {o["metadata"]["scrapbook"]["name"]: "".join(v for m, v in o["data"].items()
                                                             if m.endswith("text/plain"))
                 for c in nb.cells if c.cell_type == "code" for o in c.outputs
                 if o.get("metadata", {}).get("scrapbook")}
        assert glued or executed.stem in ("intro",), f"{executed.name}: no glued values found"
        assert not [k for k, v in glued.items() if "`" in v], f"{executed.name}: backticks in glued text"
        # a glued value fills a gap in a sentence; a glued sentence belongs in the markdown
        long = {k: v for k, v in glued.items() if book.words(v) > book.GLUED_WORDS}
        assert not long, f"{executed.name}: glued strings of more than {book.GLUED_WORDS} words: {long}"
    for md in [ROOT / f"{f}.md" for f in book.toc_files(ROOT)]:
        page = html / "book" / f"{md.stem}.html"
        dom = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chrome'}", "--virtual-time-budget=5000", "--dump-dom",
             page.as_uri()], capture_output=True, text=True, timeout=120).stdout
        assert "<main" in dom, f"{page} did not load"
        source = md.read_text()
        figures = source.count("caption:")
        assert dom.count("<img") >= figures, f"{page}: {figures} figures expected"
        assert dom.count("<figcaption") >= figures
        if "$$" in source or "\\(" in source or re.search(r"\$[^$\n]+\$", source):
            assert "mjx-container" in dom, f"{page}: math was not rendered (MathJax missing?)"
        text = re.sub(r"<(script|style|mjx-container)[^>]*>.*?</\1>", "", dom, flags=re.S)
        assert "\\mathcal" not in text and "\\lambda" not in text, f"{page}: raw LaTeX on the page"
    shot = Path(result["folder"]) / "barlow-twins.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", f"--user-data-dir={tmp_path / 'chrome2'}",
                    "--window-size=1280,2400", "--virtual-time-budget=3000", f"--screenshot={shot}",
                    (html / "book" / "barlow-twins.html").as_uri()], capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000


HIDDEN = {"remove-input", "remove-cell", "hide-input"}  # cells whose code the rendered book hides


def visible_code(md) -> tuple[int, int]:
    """A chapter's visible code lines (non-blank, non-comment lines of code cells the rendered
    page shows, the parameters cell left out) and its lines that glue a value."""
    shown = glued = 0
    for c in jupytext.read(md).cells:
        if c.cell_type != "code":
            continue
        lines = [line.strip() for line in c.source.splitlines()]
        glued += sum(1 for line in lines if re.search(r"\bglue(_all)?\(", line))
        if not ({"parameters"} | HIDDEN) & set(c.metadata.get("tags", [])):
            shown += sum(1 for line in lines if line and not line.startswith("#"))
    return shown, glued


def test_the_chapters_show_the_method_not_the_plumbing():
    """A reader scrolls past little code: at most 90 visible lines a chapter and 700 in all, at
    most 60 lines that glue (one glue cell a chapter). Fails when formatting, glue or record
    reading is left in view, or glue is spread over many lines."""
    counts = {md.stem: visible_code(md) for md in CHAPTERS}
    heavy = {k: v[0] for k, v in counts.items() if v[0] > 90}
    assert not heavy, f"chapters with more than 90 visible code lines: {heavy}; hide the plumbing (remove-input)"
    assert sum(v[0] for v in counts.values()) <= 700, counts
    assert sum(v[1] for v in counts.values()) <= 60, {k: v[1] for k, v in counts.items()}


def test_the_code_count_sees_visible_lines_and_glue(tmp_path):
    md = tmp_path / "c.md"
    md.write_text("---\njupytext:\n  text_representation:\n    extension: .md\n    format_name: myst\n"
                  "kernelspec:\n  display_name: Python 3\n  language: python\n  name: python3\n---\n\n# C\n\n```{code-cell} ipython3\n:tags: [parameters]\n\n"
                  "profile = 'cpu'\n```\n\n```{code-cell} ipython3\nx = 1\n# a comment\n\nglue('x', x)\n```\n\n"
                  "```{code-cell} ipython3\n:tags: [remove-input]\n\nbook.glue_all({'y': 2})\ny = 3\n```\n")
    assert visible_code(md) == (2, 2)


def test_executed_notebooks_lose_their_stderr_but_keep_their_results(tmp_path):
    import nbformat
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("train()")
    cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text="epoch 1/3 |###| 12 step/s\r" * 500),
                    nbformat.v4.new_output("stream", name="stdout", text="done\n"),
                    nbformat.v4.new_output("execute_result", data={"text/plain": "0.77"}, execution_count=1)]
    nb.cells = [nbformat.v4.new_markdown_cell("# A chapter"), cell]
    path = tmp_path / "chapter.ipynb"
    nbformat.write(nb, path)
    assert book.strip_stderr(path) == 1
    kept = nbformat.read(path, as_version=4).cells[1].outputs
    assert [o.output_type for o in kept] == ["stream", "execute_result"] and kept[0].name == "stdout"
    assert path.stat().st_size < 2000


# Numbers a chapter may type: section numbers, the paper's own results, settings and arithmetic,
# and measurements recorded once (labelled as such in the prose). Anything else that looks
# measured (a decimal or a percentage) must come from the run through `{glue:text}`.
SECTIONS = {"3.1", "3.2", "3.3", "3.4", "3.5", "3.6"}
PAPER = {"43.46%", "43.34%", "47.66%", "47.63%", "17.45%", "22.5%", "25%", "19%", "34%", "39%",
         "2%"}  # Table 1 and section 3; the authors' scripts' pseudo-label rounds (3%, 2%, 1%)
VERSIONS = {"2.14", "0.29"}  # the pinned torch and torchvision (2.14.1, 0.29.1)
SETTINGS = {"0.01", "0.0008", "0.2", "0.002", "0.8", "0.6", "0.3", "0.9", "0.08", "0.5", "0.1", "0.05", "3.9", "1%", "3%", "8%", "20%", "50%", "95%",
            "29%", "12.5"}
RECORDED = {"backbone": {"2.7"}, "barlow-twins": {"67.6", "71.3%", "73.7", "76.1%"},
            "classifier": {"40%", "59.5%", "73.5%", "72.6%"}}
MEASURED_LOOKING = re.compile(r"(?<![\w.])(\d+\.\d+%?|\d+%)")


def typed_numbers(md):
    found = []
    for c in jupytext.read(md).cells:
        if c.cell_type != "markdown":
            continue
        text = re.sub(r"\{glue:text\}`[^`]*`", "", c.source)     # glued: computed by the run
        text = re.sub(r"`[^`]*`", "", text)                      # code and parameter values
        text = re.sub(r"\$[^$]*\$", "", text)                    # math
        found += MEASURED_LOOKING.findall(text)
    return found


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.stem)
def test_measured_numbers_in_prose_are_glued(md):
    allowed = SECTIONS | PAPER | SETTINGS | RECORDED.get(md.stem, set())
    typed = [n for n in typed_numbers(md) if n not in allowed]
    assert not typed, (f"{md.name} types {typed} in its prose: compute them in a cell and insert them with "
                       f"glue() and {{glue:text}}, or, for a setting or the paper's own figure, add it to the allow-list")


PAGES = [ROOT / f"{f}.md" for f in book.toc_files(ROOT) if ROOT / f"{f}.md" not in CHAPTERS]


@pytest.mark.parametrize("md", PAGES, ids=lambda p: p.stem)
def test_plain_pages_type_no_measurement(md):
    """The pages that do not run (the introduction, the scaling and reproducibility appendices)
    cannot compute a number, so they may quote only the paper, settings and versions."""
    typed = [n for n in typed_numbers(md) if n not in SECTIONS | PAPER | SETTINGS | VERSIONS]
    assert not typed, f"{md.name} types {typed}: move the measurement into a chapter that computes it"


def test_the_number_check_catches_a_typed_measurement(tmp_path):
    md = tmp_path / "chapter.md"
    md.write_text("# A chapter\n\nAccuracy rose to 77.25% here, {glue:text}`acc` there, `lr=0.3` in code.\n")
    assert typed_numbers(md) == ["77.25%"]


def test_papermill_injects_only_what_differs_from_the_chapter():
    results = ROOT / "book" / "results.md"
    assert book.declared_defaults(results) == {"profile": "cpu", "seeds": 3, "all_rules": False, "fixmatch_seeds": 0,
                                               "budget_seeds": 0, "supervised_grid": "record", "compare_seeds": 3}
    assert book.injected(results, "cpu", {}) == {}                       # a default build: no injected cell
    assert book.injected(results, "cpu", {"seeds": 3, "all_rules": False}) == {}
    assert book.injected(results, "cpu", {"all_rules": True}) == {"all_rules": True}
    assert book.injected(results, "smoke", {"seeds": 10, "seed": 3}) == {"profile": "smoke", "seeds": 10, "seed": 3}
    assert book.injected(results, "smoke", {"al_experiment_seeds": 2}) == {"profile": "smoke"}  # another chapter's


def test_a_chapter_reruns_when_an_earlier_one_changed(tmp_path):
    a, b = tmp_path / "a.md", tmp_path / "b.md"
    a.write_text("# A\n")
    b.write_text("# B\n")
    before = book._key(b, "cpu", {}, book._key(a, "cpu", {}))
    a.write_text("# A, edited\n")
    assert book._key(b, "cpu", {}, book._key(a, "cpu", {})) != before
    assert book._key(b, "cpu", {}, "x") == book._key(b, "cpu", {}, "x")


def test_a_chapter_reruns_when_a_record_it_reads_is_remade(tmp_path, monkeypatch):
    """A chapter that shows a committed record (by read_record's name or its file name) reruns
    when that record changes, not when another profile's or an unread record does. Fails if the
    key leaves records out (a remade study would leave the Barlow Twins chapter's sentences stale)."""
    records = tmp_path / "results"
    records.mkdir()
    for name in ("screen-round2-cpu", "screen-cpu", "other-cpu", "screen-round2-smoke", "train-cpu"):
        (records / f"{name}.json").write_text("{}")
    monkeypatch.setattr(book, "RECORDS", records)
    md = tmp_path / "a.md"
    md.write_text('# A\n\n```python\nbook.read_record("screen-round2", p)\nread("train-cpu.json")\n```\n')
    assert [f.name for f in book.records_read(md.read_text(), "cpu")] == ["screen-round2-cpu.json", "train-cpu.json"]
    key = book._key(md, "cpu", {})
    for name in ("other-cpu", "screen-round2-smoke", "screen-cpu"):  # not read on this profile
        (records / f"{name}.json").write_text('{"x": 1}')
    assert book._key(md, "cpu", {}) == key
    (records / "screen-round2-cpu.json").write_text('{"remade": true}')
    assert book._key(md, "cpu", {}) != key
    changed = book._key(md, "cpu", {})
    (records / "train-cpu.json").write_text('{"remade": true}')
    assert book._key(md, "cpu", {}) != changed


def test_a_chapter_reruns_when_the_package_changed(tmp_path, monkeypatch):
    """The key covers the package's code: an edited function (or profile) reruns the chapters,
    a byte-identical package does not."""
    import shutil
    pkg = tmp_path / "lossless"
    shutil.copytree(book.PACKAGE, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(book, "PACKAGE", pkg)
    md = tmp_path / "a.md"
    md.write_text("# A\n")
    key = book._key(md, "cpu", {})
    assert book._key(md, "cpu", {}) == key
    pseudo = pkg / "pseudo.py"
    pseudo.write_text(pseudo.read_text().replace("never the hidden true one", "never the true one"))
    assert book._key(md, "cpu", {}) != key
    changed = book._key(md, "cpu", {})
    (pkg / "profiles" / "cpu.yaml").write_text((pkg / "profiles" / "cpu.yaml").read_text() + "\n")
    assert book._key(md, "cpu", {}) != changed


def test_chapter_times_are_read_in_reading_order(tmp_path, monkeypatch):
    from lossless import runs
    (tmp_path / "executed").mkdir()
    for stem, sec in (("results", 60.0), ("data", 6.0), ("appendix-performance", 5.0),
                      ("appendix-screen", 7.0)):
        runs.write_json(tmp_path / "executed" / f"{stem}.time.json", {"chapter": stem, "seconds": sec,
                                                                       **book.machine()})
    times = book.chapter_times(tmp_path)
    assert [t["chapter"] for t in times] == ["data", "results", "appendix-performance", "appendix-screen"]
    assert times[1]["seconds"] == 60.0
    # the performance appendix counts the chapters before it, not itself or a later one's old time
    assert [t["chapter"] for t in book.chapter_times(tmp_path, before="appendix-performance")] == ["data", "results"]
    assert times[0]["processor"] and times[0]["cores"] >= 1
    monkeypatch.delenv("LOSSLESS_BOOK", raising=False)
    assert book.chapter_times() == []
    monkeypatch.setenv("LOSSLESS_BOOK", str(tmp_path))
    assert len(book.chapter_times()) == 4


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.stem)
def test_code_lines_fit_the_column(md):
    """A code line of a chapter fits the rendered column: about 92 characters fit at 1280 px with
    the book's stylesheet (a longer line wraps there, and runs past the column in JupyterLab)."""
    long = [line for c in jupytext.read(md).cells if c.cell_type == "code" for line in c.source.splitlines()
            if len(line) > LINE]
    assert not long, f"{md.name}: {len(long)} code lines over {LINE} characters, e.g. {long[0]!r}"


LINE = 90


def test_a_chapter_that_ran_again_makes_the_later_ones_run(tmp_path, monkeypatch):
    """Executing is stubbed: the chain of keys alone decides what runs."""
    import papermill
    ran = []

    def fake_execute(src, out, **kw):
        ran.append(Path(src).stem)
        shutil.copy(src, out)
    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    out = tmp_path / "book"
    status = lambda recs: [r["status"].split()[0] for r in recs]  # noqa: E731
    first = book._run_each_chapter("smoke", {}, ROOT, out, progress=False)
    assert set(status(first)) == {"ran"} and len(ran) == len(CHAPTERS)
    assert set(status(book._run_each_chapter("smoke", {}, ROOT, out, progress=False))) == {"skipped"}
    (out / "executed" / f"{CHAPTERS[2].stem}.key").unlink()      # chapter 3 must run again...
    ran.clear()
    book._run_each_chapter("smoke", {}, ROOT, out, progress=False)
    assert ran == [md.stem for md in CHAPTERS[2:]]                  # ...and every chapter after it


def test_a_profile_sets_the_chapters_seed_counts_and_p_overrides_them(tmp_path):
    smoke = book.with_profile_defaults("smoke", {})
    assert smoke["seeds"] == 2 and smoke["al_experiment_seeds"] == 2       # the smoke book runs 2 seeds
    assert book.with_profile_defaults("smoke", {"seeds": 4})["seeds"] == 4  # -p wins
    assert book.with_profile_defaults("cpu", {}) == {}                      # the chapters' own defaults
    nbs = book.write_parameterised(tmp_path / "nb", "smoke")
    results = next(p for p in nbs if p.stem == "results")
    injected = [c for c in jupytext.read(results).cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "seeds = 2" in injected[0].source


@pytest.mark.parametrize("entry, named", [("seeds: two", "seeds"), ("no_such_parameter: 1", "no_such_parameter")])
def test_a_bad_chapters_entry_in_a_profile_is_one_line_naming_it(tmp_path, entry, named):
    from lossless.errors import LosslessError
    profile = tmp_path / "mine.yaml"
    profile.write_text((ROOT / "lossless" / "profiles" / "smoke.yaml").read_text().split("chapters:")[0]
                       + f"chapters:\n  {entry}\n")
    with pytest.raises(LosslessError) as err:
        book.with_profile_defaults(str(profile), {})
    message = str(err.value)
    assert "\n" not in message and "chapters:" in message and named in message and "mine" in message


def test_every_record_a_chapter_reads_has_a_smoke_version_so_ci_runs_its_branch():
    # the smoke book (built by test_smoke_book_builds_and_renders and nbval) then takes each
    # chapter's record-reading branch: a change in a record's format fails here, not in `make book`
    names = set()
    for md in [*CHAPTERS, *(ROOT / "lossless" / "experiments").glob("*.py")]:  # a chapter's, or its call's
        text = md.read_text()
        names |= set(re.findall(r'read_record\(\s*"([\w-]+)"', text))
        if "book_run(" in text:  # claims.book_run reads the profile's claims record
            names.add("claims")
    assert names >= {"claims", "claims-rules", "architectures", "screen"}
    missing = [n for n in sorted(names) if not (ROOT / "benchmarks" / "results" / f"{n}-smoke.json").is_file()]
    assert not missing, f"no smoke record for {missing}: make it with `lossless experiment ... --profile smoke`"


def test_nbval_notebooks_become_the_books_chapters_only_when_their_cells_are_the_builds(tmp_path, monkeypatch):
    """make test's nbval run is the smoke book's execution (tests/nbval_book.py): a notebook nbval
    ran is adopted with the key `lossless book` computes, unless its cells differ from the ones
    the build would run (then it, and every chapter after it, is left for the build to execute)."""
    import nbformat
    from nbval_book import PROFILE, NbvalBook
    monkeypatch.setenv("LOSSLESS_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    plugin = NbvalBook()
    stems = list(plugin.chapters)[:3]
    for stem in stems:
        nb = jupytext.read(book.write_notebook(plugin.chapters[stem], tmp_path / f"{stem}.ipynb", PROFILE, plugin.params))
        plugin._stage(stem, nb)
    edited = nbformat.read(plugin._staged(stems[1]), as_version=4)
    edited.cells[-1].source += "\n# a cell that is not the chapter's"
    nbformat.write(edited, plugin._staged(stems[1]))
    plugin.pytest_sessionfinish(None)
    executed = plugin.out_dir / "executed"
    first = executed / f"{stems[0]}.ipynb"
    assert first.is_file() and first.with_suffix(".key").read_text() == book._key(
        plugin.chapters[stems[0]], PROFILE, plugin.params, "")
    assert not (executed / f"{stems[1]}.ipynb").exists() and not (executed / f"{stems[2]}.ipynb").exists()


def test_a_record_made_from_another_backbone_says_so(tmp_path, monkeypatch):
    """A record whose runs fine-tuned an older backbone than the profile's (its pretraining
    settings changed since) is cited with both runs named; one made from this backbone adds
    nothing. Fails when the check compares nothing (always "") or the wrong run."""
    from lossless import config
    from lossless.pretrain import pretrain_dir
    monkeypatch.chdir(tmp_path)
    cfg = config.load_profile("smoke")
    ours = pretrain_dir(cfg).name
    assert book.record_backbone({"pretraining": {"run": f"/elsewhere/runs/{ours}"}}, cfg) == ""
    assert book.record_backbone({"seeds": []}, cfg) == ""  # a record that names no backbone
    # a key added later (ssl_lars_eta) leaves a run at its old default in its old folder
    from lossless import runs
    from lossless.pretrain import run_keys
    before = runs.run_dir(cfg, "pretrain-barlow", {k: cfg.get(k) for k in run_keys(cfg)}).name
    assert ours == before
    older = pretrain_dir(cfg.replace(ssl_lars_eta=0.01)).name
    assert older != ours
    said = book.record_backbone({"pretraining": {"run": f"/tmp/fb/runs/{older}"}}, cfg)
    assert older in said and ours in said and "earlier backbone" in said
