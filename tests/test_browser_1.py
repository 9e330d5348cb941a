"""Half 1 of the chapters in JupyterLab and headless Chromium (machinery and design: browser_lab.py).
The chapters are split in two modules so that pytest-xdist's two workers (``--dist loadfile``) run
the halves at once, each with its own JupyterLab server."""
import pytest

from browser_lab import MARKS, PARTS, browser, lab, run_chapter  # noqa: F401  (fixtures)

pytestmark = MARKS


@pytest.mark.parametrize("name", PARTS[0])
def test_chapter_in_jupyterlab(lab, browser, name):  # noqa: F811
    run_chapter(lab, browser, name)
