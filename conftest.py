"""pytest set-up shared by the unit tests and the nbval run of chapters/.

Every notebook kernel inherits this process's environment, so the profile is pinned here:
the test suite always runs the ``test`` profile (what CI runs on 2 CPU cores), whatever the
reader's shell says, and asks ``utils.widgets`` for static figures (nobody moves a slider under
nbval; a reader in JupyterLab gets live sliders in every profile). The repository root goes on
PYTHONPATH so kernels can import ``utils``.
Each process (pytest's workers and every kernel) uses one thread.
"""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
os.environ["DIFFUSION_PROFILE"] = "test"
os.environ["DIFFUSION_STATIC_WIDGETS"] = "1"  # utils.widgets.STATIC_ENV: a figure, not sliders
# One thread per process: the tests run the notebooks two at a time (pytest-xdist, one notebook per
# worker, see pytest.ini), and the small 2D models gain nothing from a second thread, while two
# processes with two threads each on two cores run many times slower (spinning OpenMP threads).
# The unit tests share it (torch.set_num_threads(1) below), so no test module sets threads itself.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MPLBACKEND"] = "Agg"
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402  (after OMP_NUM_THREADS, so this process starts with one thread too)

torch.set_num_threads(1)


sys.path.insert(0, str(ROOT / "tests"))
from browser_lab import browser_runs_notebooks  # noqa: E402

BROWSER_RUNS_NOTEBOOKS = browser_runs_notebooks()


def pytest_ignore_collect(collection_path, config):
    """With the browser tests able to run, a chapter is executed once, in JupyterLab
    (tests/browser_lab.py: Run All fails on any error output, as nbval-lax does), not a second
    time by nbval; a notebook named on the command line still runs under nbval."""
    if not BROWSER_RUNS_NOTEBOOKS or collection_path.suffix != ".ipynb" or collection_path.parent.name != "chapters":
        return None
    named = {Path(a.split("::")[0]).resolve() for a in config.invocation_params.args}
    return None if collection_path.resolve() in named else True


def pytest_collection_modifyitems(items):
    """nbval waits only 5 s for a cell's output messages after the cell finishes; on a loaded
    2-core CI machine a progress bar's last update can take longer, failing a cell that ran fine.
    Give it a minute."""
    for item in items:
        if hasattr(item, "output_timeout"):
            item.output_timeout = 60
