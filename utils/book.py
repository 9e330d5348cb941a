"""A static HTML book of the chapters, with their outputs and figures: ``python -m utils.book``.

    python -m utils.book                          # every chapter, cpu profile, into build/book/
    python -m utils.book --profile test --only 00 09 --out /tmp/book

Each chapter is executed top to bottom (``nbclient``) in the chosen profile with static widgets
(``DIFFUSION_STATIC_WIDGETS=1``: each slider's figure is drawn once, at its default values) and
exported with nbconvert's ``lab`` template; figures are embedded in the page. ``index.html`` lists
the chapters by the monograph's parts, and each page links to the previous and next chapter.

Offline: the build fetches nothing (nbconvert's template and the code-highlighting styles are
installed files). A browser that opens the book typesets the formulas with MathJax from its usual
address when it is online; offline, pass ``--mathjax`` the URL of a local ``tex-chtml.js`` (or read
the formulas as LaTeX source).
"""
from __future__ import annotations

import argparse
import html
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = ROOT / "chapters"

# The monograph's parts (v2 contents), each with the prefixes of the notebooks that belong to it.
PARTS = (
    ("Before the book", ("00",)),
    ("Part A — Introduction to Deep Generative Modeling", ("01",)),
    ("Part B — Origins and Foundations of Diffusion Models", ("02", "03", "04", "05", "06", "07")),
    ("Part C — Sampling of Diffusion Models", ("08", "09")),
    ("Part D — Toward Learning Fast Diffusion-Based Generators", ("10", "11")),
    ("Epilogue", ("12",)),
    ("Appendices", ("A", "B", "C")),
)
PROFILES = ("test", "cpu", "gpu")


def chapter_notebooks(only=None) -> list[Path]:
    """The chapter notebooks in book order (parts, then name); ``only``: prefixes to keep."""
    found = {p.name.split("_", 1)[0]: p for p in CHAPTERS.glob("*_*.ipynb")}
    if only:
        unknown = [o for o in only if o not in found]
        if unknown:
            raise ValueError(f"only={list(only)!r} names no chapter for {unknown}; expected prefixes among {sorted(found)}")
    order = [prefix for _, prefixes in PARTS for prefix in prefixes]
    ranked = sorted(found, key=lambda k: (order.index(k) if k in order else len(order), k))
    return [found[k] for k in ranked if not only or k in only]


def part_of(notebook: Path) -> str:
    prefix = notebook.name.split("_", 1)[0]
    return next((title for title, prefixes in PARTS if prefix in prefixes), "Other notebooks")


def chapter_title(nb) -> str:
    """The first Markdown heading of a notebook (its title), without the leading #'s."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return "Untitled"


def execute(nb, profile: str, timeout: int):
    """Run a notebook top to bottom in ``profile``, in a kernel started in chapters/."""
    from nbclient import NotebookClient

    env = {"DIFFUSION_PROFILE": profile, "DIFFUSION_STATIC_WIDGETS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    saved = {k: os.environ.get(k) for k in (*env, "MPLBACKEND")}
    os.environ.update(env)
    os.environ.pop("MPLBACKEND", None)  # the kernel's inline backend, so figures land in the page
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(CHAPTERS)}}).execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def _navigation(prev: tuple | None, nxt: tuple | None) -> str:
    links = ['<a href="index.html">Contents</a>']
    if prev:
        links.insert(0, f'<a href="{prev[0]}">&larr; {html.escape(prev[1])}</a>')
    if nxt:
        links.append(f'<a href="{nxt[0]}">{html.escape(nxt[1])} &rarr;</a>')
    return ('<nav style="display:flex;justify-content:space-between;gap:1em;padding:0.6em 1em;'
            'border-bottom:1px solid #ddd;font-family:sans-serif">' + "".join(links) + "</nav>")


def to_html(nb, mathjax: str | None) -> str:
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab")
    exporter.exclude_input_prompt = True
    exporter.exclude_output_prompt = True
    if mathjax:
        exporter.mathjax_url = mathjax
    body, _ = exporter.from_notebook_node(nb)
    # require.js serves live widget views, which a static page has none of: drop its CDN script
    return re.sub(r'<script[^>]*src="[^"]*require(\.min)?\.js"[^>]*>\s*</script>\s*', "", body)


def index_page(entries: list[dict], profile: str) -> str:
    rows, part = [], None
    for e in entries:
        if e["part"] != part:
            if part is not None:
                rows.append("</ul>")
            part = e["part"]
            rows.append(f"<h2>{html.escape(part)}</h2><ul>")
        rows.append(f'<li><a href="{e["file"]}">{html.escape(e["title"])}</a> '
                    f'<small>({e["seconds"]:.0f} s to run)</small></li>')
    rows.append("</ul>")
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>The Principles of Diffusion Models: "
            "an executable companion</title></head><body style='font-family:sans-serif;max-width:48em;"
            "margin:2em auto;line-height:1.5'><h1>The Principles of Diffusion Models: an executable companion</h1>"
            f"<p>Chapters executed in the <code>{profile}</code> profile; sliders are shown at their default "
            "values (open the notebooks in JupyterLab to move them).</p>" + "\n".join(rows) + "</body></html>")


def build(out: Path, profile: str = "cpu", only=None, execute_cells: bool = True, timeout: int = 1800,
          mathjax: str | None = None) -> list[dict]:
    """Write ``out/index.html`` and one page per chapter; returns the contents (file, title, part,
    seconds). ``execute_cells=False`` exports the notebooks as stored (without outputs)."""
    import nbformat

    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r} is not known; expected one of {PROFILES}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries, notebooks = [], []
    for path in chapter_notebooks(only):
        nb = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        if execute_cells:
            print(f"running {path.name} ({profile} profile) ...", flush=True)
            execute(nb, profile, timeout)
        entries.append({"file": path.with_suffix(".html").name, "title": chapter_title(nb),
                        "part": part_of(path), "seconds": time.perf_counter() - start})
        notebooks.append(nb)
    for i, (entry, nb) in enumerate(zip(entries, notebooks)):
        prev = (entries[i - 1]["file"], entries[i - 1]["title"]) if i else None
        nxt = (entries[i + 1]["file"], entries[i + 1]["title"]) if i + 1 < len(entries) else None
        page = to_html(nb, mathjax)
        page = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + _navigation(prev, nxt), page, count=1)
        (out / entry["file"]).write_text(page, encoding="utf-8")
    (out / "index.html").write_text(index_page(entries, profile), encoding="utf-8")
    return entries


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.book", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "book", help="output folder")
    parser.add_argument("--profile", default="cpu", choices=PROFILES, help="profile to run the chapters in")
    parser.add_argument("--only", nargs="*", help="chapter prefixes to build, e.g. 00 04 A")
    parser.add_argument("--no-execute", action="store_true", help="export the notebooks as stored")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds allowed per cell")
    parser.add_argument("--mathjax", help="URL of a MathJax tex-chtml.js to use instead of the usual one")
    args = parser.parse_args(argv)
    entries = build(args.out, args.profile, args.only, not args.no_execute, args.timeout, args.mathjax)
    print(f"wrote {len(entries)} chapters and {args.out / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
