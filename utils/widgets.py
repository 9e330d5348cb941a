"""ipywidgets explorers that also render a static figure when no front end is attached.

A reader in JupyterLab (any profile, ``test`` included) gets live sliders. The test suite (nbval)
and a rendered book have a kernel but nobody to move a slider: they set
``DIFFUSION_STATIC_WIDGETS=1`` (the root conftest.py does), and :func:`explore` then returns the
figure drawn at the sliders' default values. Outside a Jupyter kernel (a plain ``python`` run of a
chapter) the figure is static too. Pass ``static=True/False`` to force either. Either way the
first frame is drawn when the cell runs.
"""
from __future__ import annotations

import os

import matplotlib.pyplot as plt
import torch

from .plotting import DENSITY_UNDER_ARROWS, panels, plot_density, plot_samples, plot_vector_field


STATIC_ENV = "DIFFUSION_STATIC_WIDGETS"


def static_requested() -> bool:
    """True when ``$DIFFUSION_STATIC_WIDGETS`` asks for static figures (``1``/``true``/``yes``).

    Unset, empty or ``0``/``false``/``no`` means no; any other value is a ValueError."""
    value = os.environ.get(STATIC_ENV, "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise ValueError(f"{STATIC_ENV}={value!r} is not valid; expected 1/true/yes or 0/false/no")


def _interactive_session() -> bool:
    """Live sliders: a Jupyter kernel is running this code and no static figure was asked for.
    The profile plays no part (a reader in the ``test`` profile gets sliders too)."""
    if static_requested():
        return False
    try:
        from IPython import get_ipython

        shell = get_ipython()
        return shell is not None and hasattr(shell, "kernel")
    except ImportError:
        return False


def explore(draw, sliders: dict, static: bool | None = None):
    """Sliders over the keyword arguments of ``draw(**params) -> matplotlib Figure``.

    ``sliders`` maps a name to ``(min, max, step, default)`` (a float slider), or to a list of
    options (a dropdown, default the first). Returns an ipywidgets ``VBox`` (the controls, then an
    ``Output`` holding the figure, redrawn when a control changes; the first frame is drawn before
    it returns), or the static Figure drawn at the defaults.
    """
    if not isinstance(sliders, dict) or not sliders:
        raise ValueError(f"sliders={sliders!r} is not valid; expected a dict name -> (min, max, step, default) or options")
    defaults = {}
    for name, spec in sliders.items():
        if isinstance(spec, (list, tuple)) and len(spec) == 4 and all(isinstance(v, (int, float)) for v in spec):
            lo, hi, step, default = spec
            if not lo <= default <= hi:
                raise ValueError(f"slider {name!r} has default {default} outside [{lo}, {hi}]")
            defaults[name] = default
        elif isinstance(spec, (list, tuple)) and spec:
            defaults[name] = spec[0]
        else:
            raise ValueError(f"slider {name!r}={spec!r} is not valid; expected (min, max, step, default) or options")
    static = not _interactive_session() if static is None else static
    if static:
        fig = draw(**defaults)
        plt.close(fig)  # shown once, as the cell's value, not a second time by the inline backend
        return fig
    import ipywidgets as w

    controls = {}
    for name, spec in sliders.items():
        if name in defaults and isinstance(spec, (list, tuple)) and len(spec) == 4 and \
                all(isinstance(v, (int, float)) for v in spec):
            lo, hi, step, default = spec
            cls = w.IntSlider if all(isinstance(v, int) for v in spec) else w.FloatSlider
            controls[name] = cls(min=lo, max=hi, step=step, value=default, description=name,
                                 continuous_update=False)
        else:
            controls[name] = w.Dropdown(options=list(spec), value=spec[0], description=name)
    out = w.Output()

    def redraw(change=None):
        params = {name: c.value for name, c in controls.items()}
        try:
            out.outputs = (_figure_output(draw(**params)),)
        except Exception as exc:  # shown under the sliders; the first frame raises instead
            if change is None:
                raise
            out.outputs = (_error_output(exc),)

    redraw()  # the first frame, drawn now, at the defaults
    for c in controls.values():
        c.observe(redraw, names="value")
    return w.VBox([*controls.values(), out], _dom_classes=["widget-interact"])


def _figure_output(fig) -> dict:
    """A matplotlib Figure as a Jupyter ``display_data`` output (PNG), the figure closed.

    The explorer sets its Output widget's outputs to this directly (widget state) instead of
    capturing what the inline backend prints: captured output is routed by message id, and while
    the front end is still creating the Output widget (a notebook's "Run All" on a busy machine)
    the first frame lands below the widget instead of in it."""
    import base64
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return {"output_type": "display_data", "metadata": {},
            "data": {"image/png": base64.b64encode(buf.getvalue()).decode("ascii"), "text/plain": repr(fig)}}


def _error_output(exc: Exception) -> dict:
    """An exception raised by a redraw as a Jupyter ``error`` output (shown under the sliders)."""
    import traceback

    return {"output_type": "error", "ename": type(exc).__name__, "evalue": str(exc),
            "traceback": traceback.format_exception(type(exc), exc, exc.__traceback__)}


def velocity_field_explorer(model, oracle=None, lim: float = 3.0, n_arrows: int = 17,
                            samples=None, static: bool | None = None, t_default: float = 0.5):
    """Slider over t: the PF-ODE velocity field of ``model`` (a utils.targets.Model) beside the exact one of
    ``oracle`` (a MixtureDenoiser), with the oracle's marginal density p_t underneath and optional
    data ``samples`` (N, 2) overlaid."""
    denoisers = [("model", model)] + ([("exact (oracle)", oracle)] if oracle is not None else [])

    def draw(t=t_default):
        fig, axes = panels(len(denoisers), ncols=2, size=4.5, squeeze=False)
        for ax, (name, d) in zip(axes, denoisers):
            if oracle is not None:  # a light density, so the arrows on its peaks stay visible
                plot_density(lambda p: oracle.log_prob(p, t), ax=ax, lim=lim, cmap=DENSITY_UNDER_ARROWS)
            if samples is not None:
                plot_samples(samples, ax=ax, lim=lim, s=1, alpha=0.2)
            field = lambda p, d=d: d.velocity(p.to(torch.get_default_dtype()) if name == "model" else p, t)
            plot_vector_field(field, ax=ax, lim=lim, n=n_arrows, color="C3" if name == "model" else "C0",
                              title=f"{name}: velocity at t={t:.2f}")
        fig.tight_layout()
        return fig

    return explore(draw, {"t": (0.0, 1.0, 0.02, t_default)}, static=static)
