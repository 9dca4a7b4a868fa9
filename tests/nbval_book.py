"""nbval's run of the smoke chapters is the smoke book's one execution in ``make test``.

``make test`` writes every chapter as a notebook with the smoke profile injected
(``lossless book --profile smoke --notebooks-only runs/nbval``) and nbval runs their cells, the
chapters' own checks included (each method's core asserted equal to the package). This plugin
(registered by ``conftest.py``) makes that run count as the smoke book's execution:

- each notebook's kernel runs as ``lossless book`` runs a chapter: its run folders go to the
  book's runs root and ``LOSSLESS_BOOK`` names the book's folder;
- every cell's outputs are kept, and a notebook whose cells all passed is written, stderr removed,
  where ``lossless book --profile smoke`` keeps its executed chapters, with the cache key that
  build would compute (:func:`lossless.book._key`), after checking that its cells are the ones
  that build would run. The rendering test, and a later ``lossless book --profile smoke``, then
  render these outputs instead of executing the chapters again;
- under pytest-xdist, ``--dist loadfile`` keeps one notebook's cells on one worker (they share
  one kernel); the notebooks are adopted once every worker has finished.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

PROFILE = "smoke"


def _is_cell(item) -> bool:
    try:
        from nbval.plugin import IPyNbCell
    except ImportError:
        return False
    return isinstance(item, IPyNbCell)


class NbvalBook:
    def __init__(self):
        from lossless import book
        self.book = book
        self.params = book.with_profile_defaults(PROFILE, {})
        self.out_dir = book.book_dir(PROFILE, self.params)
        self.chapters = {md.stem: md for md in book.chapter_notebooks()}
        self.failed: set[str] = set()
        self.seconds: dict[str, float] = {}
        self.saved_env: dict[str, str | None] | None = None
        self.worker = bool(os.environ.get("PYTEST_XDIST_WORKER"))
        # the second pass under other kernels (conftest.OTHER_KERNELS) checks; it is not the book's
        # execution: adopting its chapters would give them new times, and every later chapter's key
        # (which chains the times) would change, so the rendering test would run them again
        self.adopt = os.environ.get("LOSSLESS_OTHER_KERNELS") != "1"
        if self.adopt and not self.worker:              # nothing staged by an earlier session is adopted
            for old in (self.out_dir / "executed").glob(".*.nbval.*"):
                old.unlink()

    def _chapter(self, item) -> str | None:
        stem = Path(str(item.parent.fspath)).stem
        return stem if stem in self.chapters else None

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item):
        if _is_cell(item) and self._chapter(item) and self.saved_env is None:
            # before nbval starts the notebook's kernel, which inherits this environment
            self.saved_env = {k: os.environ.get(k) for k in ("LOSSLESS_RUNS", "LOSSLESS_BOOK")}
            os.environ.update(LOSSLESS_RUNS=str(self.out_dir.parent), LOSSLESS_BOOK=str(self.out_dir))

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        report = outcome.get_result()
        if not (_is_cell(item) and self._chapter(item)):
            return
        stem = self._chapter(item)
        if report.failed or (call.when == "call" and item.test_outputs is None):
            self.failed.add(stem)
        elif call.when == "call":
            outputs = [o for o in item.test_outputs if not (o.output_type == "stream" and o.get("name") == "stderr")]
            item.cell.outputs = outputs
            counts = [o.execution_count for o in outputs if o.output_type == "execute_result"]
            item.cell.execution_count = counts[0] if counts else item.cell_num + 1
            self.seconds[stem] = self.seconds.get(stem, 0.0) + report.duration

    def pytest_runtest_teardown(self, item, nextitem):
        if not (_is_cell(item) and self._chapter(item)):
            return
        if nextitem is None or getattr(nextitem, "parent", None) is not item.parent:   # the notebook's last cell
            self._restore_env()
            stem = self._chapter(item)
            if stem not in self.failed and self.adopt:
                self._stage(stem, item.parent.nb)

    def _restore_env(self):
        for k, v in (self.saved_env or {}).items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self.saved_env = None

    def _staged(self, stem: str) -> Path:
        return self.out_dir / "executed" / f".{stem}.nbval.ipynb"

    def _stage(self, stem: str, nb) -> None:
        import nbformat
        staged = self._staged(stem)
        staged.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, str(staged))
        self.book.write_time(staged.with_suffix(".time.json"), stem, self.seconds.get(stem, 0.0))

    def pytest_sessionfinish(self, session):
        """Adopt the staged notebooks in reading order, each with the key ``lossless book`` would
        give it (in the one process that saw every worker finish); the first chapter neither
        current nor staged (failed, not run) ends the chain, as a changed chapter makes every
        later one rerun in a build."""
        if self.worker or not self.adopt:
            return
        import jupytext
        before, executed = "", self.out_dir / "executed"
        for stem, md in self.chapters.items():
            key = self.book._key(md, PROFILE, self.params, before)
            target = executed / f"{stem}.ipynb"
            timing, staged = target.with_suffix(".time.json"), self._staged(stem)
            if staged.is_file():
                expected = self.book.write_notebook(md, executed / f".{stem}.expected.ipynb", PROFILE, self.params)
                same = [c.source for c in jupytext.read(staged).cells] == [c.source for c in jupytext.read(expected).cells]
                expected.unlink()
                if not same:
                    break
                os.replace(staged, target)
                os.replace(staged.with_suffix(".time.json"), timing)
                target.with_suffix(".key").write_text(key)
            elif not self.book.is_current(target, key):
                break
            before = key + timing.read_text()
