"""Each chapter notebook chapters/NN_name.ipynb is paired with a percent-format text source
chapters/NN_name.py (see jupytext.toml). The .py is what reviews read; these tests fail when the two
drift apart, when a notebook is committed with outputs, or when cell ids clash.

Fix a failing pair with  jupytext --sync chapters/NN_name.py  (it syncs from the newer file).
Fast and torch-free: the notebooks are read, never executed.
"""
import json
from pathlib import Path

import jupytext
import pytest

CHAPTERS = Path(__file__).resolve().parent.parent / "chapters"
NOTEBOOKS = sorted(CHAPTERS.glob("*.ipynb"))
SOURCES = sorted(CHAPTERS.glob("*.py"))


def _cells(nb_cells):
    """What must agree between the two files: cell type, source and tags, cell by cell."""
    return [(c["cell_type"], c["source"], list(c.get("metadata", {}).get("tags", []))) for c in nb_cells]


def pair_problems(ipynb: Path) -> list:
    """Everything wrong with one notebook and its paired .py, as readable messages (empty if none)."""
    py = ipynb.with_suffix(".py")
    if not py.exists():
        return [f"{ipynb.name} has no paired {py.name}: run  jupytext --sync {ipynb}"]
    ipynb_cells = _cells(jupytext.read(ipynb)["cells"])
    py_cells = _cells(jupytext.read(py, fmt="py:percent")["cells"])
    if ipynb_cells == py_cells:
        return []
    problems = []
    if len(ipynb_cells) != len(py_cells):
        problems.append(f"{ipynb.name} has {len(ipynb_cells)} cells, {py.name} has {len(py_cells)}")
    for i, (a, b) in enumerate(zip(ipynb_cells, py_cells)):
        if a != b:
            what = [name for name, x, y in zip(("type", "source", "tags"), a, b) if x != y]
            lines = [(x, y) for x, y in zip(a[1].splitlines() + [""], b[1].splitlines() + [""]) if x != y]
            detail = f"{lines[0][0]!r} vs {lines[0][1]!r}" if lines else f"{a[0]} {a[2]} vs {b[0]} {b[2]}"
            problems.append(f"cell {i} differs ({', '.join(what)}), ipynb vs py: {detail}")
            break
    problems.append(f"out of sync: run  jupytext --sync {py}")
    return problems


def stored_problems(ipynb: Path) -> list:
    """The committed .ipynb itself: output-free, and every cell has an id, unique in the notebook."""
    cells = json.loads(ipynb.read_text(encoding="utf-8"))["cells"]
    problems = []
    for i, c in enumerate(cells):
        if c.get("outputs"):
            problems.append(f"cell {i} ({c.get('id')}) has outputs")
        if c.get("execution_count") is not None:
            problems.append(f"cell {i} ({c.get('id')}) has execution_count {c['execution_count']}")
    ids = [c.get("id") for c in cells]
    if None in ids:
        problems.append(f"{ids.count(None)} cells without an id")
    dupes = sorted({i for i in ids if i is not None and ids.count(i) > 1})
    if dupes:
        problems.append(f"duplicate cell ids {dupes}")
    return problems


def test_chapters_exist():
    assert NOTEBOOKS, f"no notebooks found in {CHAPTERS}"


@pytest.mark.parametrize("ipynb", NOTEBOOKS, ids=lambda p: p.stem)
def test_py_source_matches_notebook(ipynb):
    problems = pair_problems(ipynb)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("ipynb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_output_free_with_unique_ids(ipynb):
    problems = stored_problems(ipynb)
    assert not problems, f"{ipynb.name}: " + "; ".join(problems)


@pytest.mark.parametrize("py", SOURCES, ids=lambda p: p.stem)
def test_every_py_source_has_a_notebook(py):
    assert py.with_suffix(".ipynb").exists(), f"{py.name} has no paired notebook {py.stem}.ipynb"
