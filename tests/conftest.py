"""Shared fixtures of the unit tests of utils/ (the repository root's conftest.py pins the
``test`` profile and the Agg backend; helpers live in core_helpers.py)."""
import matplotlib

matplotlib.use("Agg")

import pytest

from core_helpers import ALL_SCHEDULES, SCHEDULE_IDS, full_cov_mixture


@pytest.fixture(params=ALL_SCHEDULES, ids=SCHEDULE_IDS)
def schedule(request):
    """Every schedule of utils.schedules, one at a time."""
    return request.param


@pytest.fixture
def mixture():
    return full_cov_mixture()
