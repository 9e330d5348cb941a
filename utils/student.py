"""Student versions of the chapters: ``python -m utils.student``.

    python -m utils.student                      # every chapter into student/
    python -m utils.student --only 05 A --out /tmp/course

Markup, the conventions of nbgrader (so an instructor's nbgrader set-up reads the same notebooks):

* a cell tagged ``solution`` is an answer cell: a code cell becomes the placeholder
  ``# YOUR CODE HERE`` / ``raise NotImplementedError()``, a Markdown cell ``YOUR ANSWER HERE``;
* inside any code cell, the lines from ``### BEGIN SOLUTION`` to ``### END SOLUTION`` become the
  placeholder and the lines around them (the scaffold of the exercise) stay;
* everything else is kept, the ``check`` cells that follow the answers included
  (:mod:`utils.exercises`), so a student can test an answer.

The student notebooks are written without outputs.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

from .book import ROOT, chapter_notebooks

CODE_PLACEHOLDER = "# YOUR CODE HERE\nraise NotImplementedError()"
MARKDOWN_PLACEHOLDER = "YOUR ANSWER HERE"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"


def _clear_marked(source: str, where: str) -> str:
    """Replace every BEGIN/END SOLUTION block of a code cell by the placeholder, at its indent."""
    out, inside = [], False
    for line in source.splitlines():
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise ValueError(f"{where}: a second {BEGIN!r} before {END!r}")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out.extend(indent + p for p in CODE_PLACEHOLDER.splitlines())
        elif stripped == END:
            if not inside:
                raise ValueError(f"{where}: {END!r} without {BEGIN!r}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{where}: {BEGIN!r} is never closed by {END!r}")
    return "\n".join(out)


def student_version(nb, name: str = "notebook"):
    """A copy of ``nb`` (an nbformat notebook) with its solutions replaced by placeholders and no
    outputs; returns (notebook, number of answers cleared)."""
    nb = copy.deepcopy(nb)
    cleared = 0
    for i, cell in enumerate(nb.cells):
        where = f"{name} cell {i} ({cell.get('id', '?')})"
        if "solution" in cell.get("metadata", {}).get("tags", []):
            cell.source = CODE_PLACEHOLDER if cell.cell_type == "code" else MARKDOWN_PLACEHOLDER
            cleared += 1
        elif cell.cell_type == "code" and (BEGIN in cell.source or END in cell.source):
            cell.source = _clear_marked(cell.source, where)
            cleared += 1
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb, cleared


def write_student_versions(out: Path, only=None) -> list[tuple[Path, int]]:
    """Write a student version of each chapter into ``out``; returns (path, answers cleared)."""
    import nbformat

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in chapter_notebooks(only):
        nb, cleared = student_version(nbformat.read(path, as_version=4), path.name)
        target = out / path.name
        nbformat.write(nb, target)
        written.append((target, cleared))
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.student", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "student", help="output folder")
    parser.add_argument("--only", nargs="*", help="chapter prefixes, e.g. 05 A")
    args = parser.parse_args(argv)
    for path, cleared in write_student_versions(args.out, args.only):
        print(f"{path}: {cleared} answers left to the student")
    return 0


if __name__ == "__main__":
    sys.exit(main())
