"""Mean ± sample standard deviation over seeds."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

MeanSd = dict[str, Any]  # {"mean": float, "sd": float, "values": list[float]}


def mean_sd(values: Sequence[float]) -> MeanSd:
    """{"mean", "sd", "values"} with the sample sd (ddof=1), 0.0 for a single value."""
    floats = [float(v) for v in values]
    if not floats:
        raise ValueError("mean_sd needs at least one value")
    array = np.asarray(floats)
    sd = float(array.std(ddof=1)) if array.size > 1 else 0.0
    return {"mean": float(array.mean()), "sd": sd, "values": floats}


def aggregate_runs(runs: Sequence[Mapping[str, float]]) -> dict[str, MeanSd]:
    """Per metric mean_sd over runs (one metric dict per seed); every run must report the same metrics."""
    if not runs:
        raise ValueError("aggregate_runs needs at least one run")
    names = list(runs[0])
    for i, run in enumerate(runs[1:], start=1):
        if set(run) != set(names):
            raise ValueError(f"run {i} reports {sorted(run)}, run 0 reports {sorted(names)}")
    return {name: mean_sd([run[name] for run in runs]) for name in names}


def format_mean_sd(d: Mapping[str, Any] | float, digits: int = 4) -> str:
    """Format a mean_sd dict as "0.7912 ± 0.0012"; a plain number prints alone; NaN or missing prints "—"."""
    if isinstance(d, Mapping):
        mean, sd = d.get("mean"), d.get("sd")
    else:
        mean, sd = d, None
    if mean is None or math.isnan(float(mean)):
        return "—"
    if sd is None:
        return f"{float(mean):.{digits}f}"
    return f"{float(mean):.{digits}f} ± {float(sd):.{digits}f}"
