"""Profiles (DIFFUSION_PROFILE), pick(), seeding; plotting helpers return axes; widgets.explore
draws a static figure without a front end."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
import torch

from utils import config, plotting, samplers, training, widgets
from utils.data import toy_gmm
from utils.schedules import LinearPath, uniform_grid


@pytest.mark.parametrize("value, expected", [("test", "test"), ("cpu", "cpu"), ("gpu", "gpu"),
                                             (" GPU ", "gpu"), ("Test", "test")])
def test_profile_from_environment(monkeypatch, value, expected):
    monkeypatch.setenv(config.ENV_VAR, value)
    assert config.get_profile() == expected


def test_profile_unset_follows_cuda(monkeypatch):
    monkeypatch.delenv(config.ENV_VAR, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert config.get_profile() == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert config.get_profile() == "gpu"
    monkeypatch.setenv(config.ENV_VAR, "")
    assert config.get_profile() == "gpu"


def test_bad_profile(monkeypatch):
    monkeypatch.setenv(config.ENV_VAR, "laptop")
    with pytest.raises(ValueError, match="DIFFUSION_PROFILE='laptop'"):
        config.get_profile()
    with pytest.raises(ValueError, match="profile='tpu'"):
        config.get_device("tpu")
    with pytest.raises(ValueError, match="profile='big'"):
        config.pick({"test": 1, "cpu": 2}, profile="big")


def test_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert config.get_device("test") == torch.device("cpu")
    assert config.get_device("gpu") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert config.get_device("gpu") == torch.device("cpu")


def test_pick(monkeypatch):
    table = {"test": dict(steps=3), "cpu": dict(steps=30), "gpu": dict(steps=300)}
    assert config.pick(table, "test") == {"steps": 3}
    assert config.pick(table, "gpu") == {"steps": 300}
    assert config.pick({"test": 1, "cpu": 2}, "gpu") == 2  # gpu falls back to cpu
    monkeypatch.setenv(config.ENV_VAR, "cpu")
    assert config.pick(table) == {"steps": 30}
    with pytest.raises(ValueError, match="table is missing the profiles \\['cpu'\\]"):
        config.pick({"test": 1})
    with pytest.raises(ValueError, match="table has unknown profiles \\['tpu'\\]"):
        config.pick({"test": 1, "cpu": 2, "tpu": 3})


def test_seed_and_setup(monkeypatch, capsys):
    g = config.seed_everything(3)
    a = torch.rand(3)
    assert torch.equal(torch.rand(2, generator=g), torch.rand(2, generator=torch.Generator().manual_seed(3)))
    config.seed_everything(3)
    assert torch.equal(torch.rand(3), a)
    with pytest.raises(ValueError, match="seed=-1"):
        config.seed_everything(-1)
    monkeypatch.setenv(config.ENV_VAR, "test")
    profile, device, gen = config.setup(seed=0)
    assert profile == "test" and device == torch.device("cpu") and isinstance(gen, torch.Generator)
    assert "profile=test" in capsys.readouterr().out


# --- plotting and widgets -------------------------------------------------------------------------

MIX = toy_gmm("8gaussians")


def test_plotting_helpers_return_axes():
    x, y = MIX.sample(200, torch.Generator().manual_seed(0))
    fig, axes = plt.subplots(1, 6)
    try:
        assert plotting.plot_samples(x, ax=axes[0], labels=y, title="samples") is axes[0]
        assert plotting.plot_density(MIX.log_prob, ax=axes[1], n=30, title="p") is axes[1]
        assert plotting.plot_density(MIX.log_prob, ax=axes[2], n=30, log=True) is axes[2]
        oracle = MIX.denoiser(LinearPath())
        assert plotting.plot_vector_field(lambda p: oracle.velocity(p, 0.5), ax=axes[3], n=9) is axes[3]
        assert plotting.plot_vector_field(lambda p: oracle.velocity(p, 0.5), ax=axes[4], n=9, kind="stream",
                                          normalize=True) is axes[4]
        rec = samplers.Recorder()
        samplers.sample_euler(oracle, torch.randn(10, 2, dtype=torch.float64), uniform_grid(5), callback=rec)
        assert plotting.plot_trajectories(rec.xs, ax=axes[5]) is axes[5]
        with pytest.raises(ValueError, match="kind='arrows'"):
            plotting.plot_vector_field(lambda p: p, ax=axes[3], kind="arrows")
    finally:
        plt.close(fig)
    fig, ax = plt.subplots()
    try:
        assert plotting.plot_loss(training.History(losses=[1.0, 0.5, 0.3, 0.2]), ax=ax, window=2) is ax
        assert plotting.plot_loss([1.0, 0.5], ax=ax) is ax
    finally:
        plt.close(fig)
    pts, X, Y = plotting.grid_points(2.0, 5)
    assert pts.shape == (25, 2) and X.shape == (5, 5)
    plt.figure()
    assert plotting.plot_samples(x) is plt.gca()  # ax=None draws on the current axes
    plt.close("all")


def test_explore_static_returns_a_figure():
    def draw(t=0.5, name="a"):
        fig, ax = plt.subplots()
        ax.set_title(f"{name} {t}")
        return fig

    fig = widgets.explore(draw, {"t": (0.0, 1.0, 0.1, 0.3), "name": ["b", "c"]}, static=True)
    assert isinstance(fig, matplotlib.figure.Figure)
    assert fig.axes[0].get_title() == "b 0.3"
    plt.close(fig)
    # outside a kernel (plain python, pytest) explore draws the static figure by default
    fig = widgets.explore(draw, {"t": (0.0, 1.0, 0.1, 0.3)})
    assert isinstance(fig, matplotlib.figure.Figure)
    plt.close(fig)
    with pytest.raises(ValueError, match="sliders"):
        widgets.explore(draw, {})
    with pytest.raises(ValueError, match="slider 't' has default 2"):
        widgets.explore(draw, {"t": (0.0, 1.0, 0.1, 2.0)}, static=True)
    with pytest.raises(ValueError, match="slider 't'"):
        widgets.explore(draw, {"t": 0.5}, static=True)


def test_explore_interactive_builds_widgets():
    pytest.importorskip("ipywidgets")
    w = widgets.explore(lambda t=0.5: plt.figure(), {"t": (0.0, 1.0, 0.1, 0.5)}, static=False)
    assert hasattr(w, "children")
    plt.close("all")


class _FakeKernelShell:
    kernel = object()  # what IPython's kernel shell has and a terminal IPython lacks


@pytest.mark.parametrize("profile", ["test", "cpu", "gpu"])
def test_live_sliders_in_a_kernel_in_every_profile(monkeypatch, profile):
    """A reader's kernel gets sliders whatever the profile; DIFFUSION_STATIC_WIDGETS=1 (set by the
    root conftest.py for nbval) gives the static figure; static= overrides both. The slider version
    draws its first frame when built (the draw function runs once at the defaults)."""
    pytest.importorskip("ipywidgets")
    import IPython

    monkeypatch.setattr(IPython, "get_ipython", lambda: _FakeKernelShell())
    monkeypatch.setenv(config.ENV_VAR, profile)
    calls = []

    def draw(t=0.5, name="a"):
        calls.append((t, name))
        fig, ax = plt.subplots()
        ax.set_title(f"{name} {t}")
        return fig

    sliders = {"t": (0.0, 1.0, 0.1, 0.3), "name": ["b", "c"]}
    monkeypatch.setenv(widgets.STATIC_ENV, "0")
    w = widgets.explore(draw, sliders)
    assert not isinstance(w, matplotlib.figure.Figure) and hasattr(w, "children")
    assert calls == [(0.3, "b")]  # the first frame, at the defaults, in the Output widget (state)
    out = w.children[-1]
    first = out.outputs[0]["data"]["image/png"]
    w.children[0].value = 0.7  # moving the slider redraws
    assert calls[-1] == (0.7, "b") and len(out.outputs) == 1
    assert out.outputs[0]["data"]["image/png"] != first
    w.children[1].value = "c"  # so does the dropdown
    assert calls[-1] == (0.7, "c")
    assert not plt.get_fignums()  # every drawn figure is closed (no second copy from the inline backend)
    monkeypatch.delenv(widgets.STATIC_ENV)
    assert hasattr(widgets.explore(draw, sliders), "children")  # unset: sliders too
    monkeypatch.setenv(widgets.STATIC_ENV, "1")
    fig = widgets.explore(draw, sliders)
    assert isinstance(fig, matplotlib.figure.Figure) and fig.axes[0].get_title() == "b 0.3"
    assert hasattr(widgets.explore(draw, sliders, static=False), "children")  # the argument wins
    monkeypatch.setenv(widgets.STATIC_ENV, "0")
    assert isinstance(widgets.explore(draw, sliders, static=True), matplotlib.figure.Figure)
    monkeypatch.setenv(widgets.STATIC_ENV, "maybe")
    with pytest.raises(ValueError, match="DIFFUSION_STATIC_WIDGETS='maybe'"):
        widgets.explore(draw, sliders)
    plt.close("all")


def test_explorer_errors_show_under_the_sliders(monkeypatch):
    """A redraw that raises shows its traceback as an error output under the sliders (a reader sees
    it, the browser test fails on it); a first frame that raises raises in the cell."""
    pytest.importorskip("ipywidgets")

    def draw(t=0.5):
        if t > 0.6:
            raise ValueError(f"t={t} too large")
        return plt.figure()

    w = widgets.explore(draw, {"t": (0.0, 1.0, 0.1, 0.5)}, static=False)
    w.children[0].value = 0.8
    err = w.children[-1].outputs[0]
    assert err["output_type"] == "error" and err["ename"] == "ValueError" and "t=0.8" in err["evalue"]
    with pytest.raises(ValueError, match="t=0.9"):
        widgets.explore(draw, {"t": (0.0, 1.0, 0.1, 0.9)}, static=False)
    plt.close("all")


def test_static_widgets_requested_by_the_test_suite():
    """The root conftest.py asks for static figures, so nbval's kernels (which inherit the
    environment) draw one figure per widget."""
    import os

    assert os.environ.get(widgets.STATIC_ENV) == "1" and widgets.static_requested()


def test_velocity_field_explorer_static():
    oracle = MIX.denoiser(LinearPath())
    fig = widgets.velocity_field_explorer(oracle, oracle=oracle, n_arrows=7, static=True,
                                          samples=MIX.sample(50)[0])
    assert isinstance(fig, matplotlib.figure.Figure) and len(fig.axes) == 2
    plt.close(fig)


def test_panels_wrap_instead_of_shrinking():
    """plotting.panels: n axes, at most ncols per row, the figure no wider than MAX_FIG_WIDTH, so
    JupyterLab shows it unscaled; unused grid cells are removed."""
    fig, axes = plotting.panels(5, ncols=3)
    try:
        assert len(axes) == 5 and len(fig.axes) == 5
        w, h = fig.get_size_inches()
        assert w <= plotting.MAX_FIG_WIDTH and h == pytest.approx(2 * w / 3)  # two rows of square panels
    finally:
        plt.close(fig)
    fig, ax = plotting.panels(1)
    assert isinstance(ax, matplotlib.axes.Axes)
    plt.close(fig)
    fig, axes = plotting.panels(2, size=8.0, squeeze=False)
    assert len(axes) == 2 and fig.get_size_inches()[0] == plotting.MAX_FIG_WIDTH
    plt.close(fig)
    for bad, match in [(dict(n=0), "n=0"), (dict(n=2, ncols=0), "ncols=0"), (dict(n=2, size=-1.0), "size=-1.0")]:
        with pytest.raises(ValueError, match=match):
            plotting.panels(**bad)


def test_arrows_stay_visible_over_a_density():
    """The density colormap for arrows stops at mid-grey (its darkest colour keeps luminance > 0.4,
    where plain Greys reaches black), and plot_vector_field's arrows have white edges."""
    darkest = plotting.DENSITY_UNDER_ARROWS(1.0)[:3]
    assert min(darkest) > 0.4 and min(plt.get_cmap("Greys")(1.0)[:3]) < 0.05
    fig, ax = plt.subplots()
    try:
        plotting.plot_vector_field(lambda p: -p, ax=ax, n=5)
        quiver = ax.collections[-1]
        assert tuple(quiver.get_edgecolor()[0][:3]) == (1.0, 1.0, 1.0)
    finally:
        plt.close(fig)
