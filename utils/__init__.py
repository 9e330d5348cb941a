"""The reference package of the companion to *The Principles of Diffusion Models*.

Chapters write an algorithm out first, check it against the function here, and use this one
from then on. See README.md, "utils at a glance".
"""
from . import config, data, gmm, losses, metrics, nets, plotting, samplers, schedules, targets, training, widgets
# modules introduced by the chapters (Ch. 2-11); `ot` needs scipy (a scikit-learn dependency)
from . import ddpm, distillation, flowmaps, flows, guidance, likelihood, ot, paths, score_matching, solvers

__all__ = ["config", "data", "gmm", "losses", "metrics", "nets", "plotting", "samplers", "schedules",
           "targets", "training", "widgets", "ddpm", "distillation", "flowmaps", "flows", "guidance", "likelihood", "ot", "paths",
           "score_matching", "solvers"]
