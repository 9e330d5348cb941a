"""Checks for the chapters' exercises: each says what is wrong with an answer, not just ``False``.

A chapter's exercise has three cells: the question (Markdown), the answer (a code cell tagged
``solution``, which the student versions of ``python -m utils.student`` replace with a
placeholder) and the check (a code cell tagged ``check``, kept in every version), e.g.::

    exercises.check_close("v_exact", v_exact, oracle.velocity(x, t), rtol=1e-4,
                          hint="the velocity of the linear path is eps - x0, averaged over the posterior")

A right answer prints a line starting with a check mark; a wrong one raises ``AssertionError``
with the name, what was expected, what came, and the hint.
"""
from __future__ import annotations

import numpy as np
import torch


def _as_array(value, name: str) -> np.ndarray:
    if value is None or value is Ellipsis or value is NotImplemented:
        raise AssertionError(f"{name} has no answer yet ({value!r}): compute it in the cell above")
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double().numpy()
    try:
        return np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise AssertionError(f"{name} should be a number, an array or a tensor; got {type(value).__name__}") from None


def check_close(name: str, value, expected, rtol: float = 1e-5, atol: float = 1e-8, hint: str = "") -> None:
    """Check that the reader's ``value`` equals ``expected`` (numbers, arrays or tensors) to
    ``|value - expected| <= atol + rtol |expected|`` elementwise; explain a mismatch."""
    got, want = _as_array(value, name), _as_array(expected, "the expected value")
    tail = f"\nHint: {hint}" if hint else ""
    if got.shape != want.shape:
        raise AssertionError(f"{name} has shape {got.shape}; expected shape {want.shape}{tail}")
    if not np.all(np.isfinite(got)):
        raise AssertionError(f"{name} holds {int(np.sum(~np.isfinite(got)))} non-finite entries (nan or inf){tail}")
    err = np.abs(got - want)
    bad = err > atol + rtol * np.abs(want)
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(bad, err, -1.0)), got.shape) if got.shape else ()
        where = f" at index {tuple(int(k) for k in i)}" if got.shape else ""
        raise AssertionError(
            f"{name} is off{where}: got {got[i]:.6g}, expected {want[i]:.6g} "
            f"({int(bad.sum())} of {bad.size} entries outside rtol={rtol:g}, atol={atol:g}){tail}")
    print(f"\u2713 {name} is right (max error {err.max() if err.size else 0.0:.2g})")


def check_between(name: str, value, low: float, high: float, hint: str = "") -> None:
    """Check that a scalar answer lies in ``[low, high]`` (a fitted order, a ratio to a floor)."""
    got = _as_array(value, name)
    if got.size != 1:
        raise AssertionError(f"{name} should be one number; got shape {got.shape}")
    x = float(got.reshape(()))
    if not low <= x <= high:
        tail = f"\nHint: {hint}" if hint else ""
        raise AssertionError(f"{name} = {x:.6g} lies outside the expected range [{low:g}, {high:g}]{tail}")
    print(f"\u2713 {name} = {x:.4g} lies in [{low:g}, {high:g}]")
