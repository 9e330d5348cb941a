"""Half 2 of the chapters in JupyterLab and headless Chromium (the design: browser_lab.py); two
modules, so that pytest-xdist's two workers (``--dist loadfile``) run the halves at once."""
from browser_lab import browser, chapter_test, lab  # noqa: F401  (the fixtures the test uses)

test_chapter_in_jupyterlab = chapter_test(1)
