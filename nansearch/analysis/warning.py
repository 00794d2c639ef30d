"""Early warning: a finite trial whose trend would carry it past its dtype's range.

A trial runs a few steps; a NaN that comes at step 500 is out of its sight. But a run
whose max |logit| doubles every step under amp-fp16 is finite at step 20 and certain to
overflow later. For each finite trial, the signals of the trail are fitted:

- max |logit| against the compute dtype's largest value (float16: 65504);
- the gradient norm against the same limit (it bounds every gradient value); under a
  GradScaler, against the gradient norm at which the trail saw the scaled gradient
  overflow (:func:`overflow_norm`), taken down to ``optimizer.min_loss_scale``;
- the loss against the largest value of the dtype it is computed in (float32 under
  autocast, the weights' dtype otherwise);
- under a GradScaler, the loss scale's drops: at the rate the trail shows, the step at
  which the scale is down to ``optimizer.min_loss_scale``, where an overflowing gradient
  becomes a failure.

A magnitude is fitted over the latter part of the trail three ways: as a straight line
(growth by a constant amount per step, as Adam's normalized updates grow one weight),
as a power of the step (Adam's steps of constant size grow every layer's weights
together, and their product, the output, grows as a polynomial in the step: on a log
scale the growth slows as 1/step) and as a straight line on a log scale (growth by a
constant factor per step, as a divergence does). The fit that follows the points most
closely on a log scale predicts the step at which the value would pass the limit if
the trend held. A trend
counts only when its slope is well clear of the noise (its t statistic at least
``MIN_T``) and the value grew by a quarter over the window, so a flat or noisy trail
never warns.

A trial predicted to fail within the horizon (``search.horizon`` steps, by default ten
times ``steps``) is *at risk*. At risk is never NaN and never a cause: the ranking
lists such trials apart (:func:`at_risk`), with the predicted step and the trend.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from nansearch.dtypes import LIMITS
from nansearch.trial.runner import TrialResult

MIN_POINTS = 6  # fewer finite points than this fit nothing
MIN_T = 4.0  # the slope's t statistic a trend needs to count
MIN_GROWTH = 1.25  # the fitted value over the window grows by at least this factor
MIN_DROPS = 2  # loss-scale drops in the window that make a trend
SIGNALS = {
    "logit_absmax": "max |logit|",
    "loss": "loss",
    "grad_norm": "gradient norm",
    "loss_scale": "loss scale",
}


@dataclass(frozen=True)
class Fit:
    """A fitted trend: ``value(step) = a + b * step`` (linear), ``exp(a) * (step + 1) ** b``
    (power: step 0 is the first step) or ``exp(a + b * step)`` (exponential)."""

    kind: str  # linear | power | exponential
    a: float
    b: float
    t: float  # the slope's t statistic
    sse: float  # squared residuals on a log scale, to compare the two kinds

    def value(self, step: float) -> float:
        if self.kind == "linear":
            return self.a + self.b * step
        if self.kind == "power":
            return math.exp(min(self.a + self.b * math.log1p(step), 700.0))
        return math.exp(min(self.a + self.b * step, 700.0))

    def crossing(self, limit: float) -> float | None:
        """The step at which the trend reaches ``limit``; None when it never does."""
        if self.b <= 0:
            return None
        if self.kind == "linear":
            return (limit - self.a) / self.b
        if self.kind == "power":
            return math.expm1(min((math.log(limit) - self.a) / self.b, 700.0))
        return (math.log(limit) - self.a) / self.b

    @property
    def rate(self) -> str:
        if self.kind == "linear":
            return f"+{self.b:.3g} per step"
        if self.kind == "power":
            return f"as step^{self.b:.3g}"
        return f"x{math.exp(self.b):.3g} per step"


@dataclass
class Forecast:
    """What the trail of one finite trial says about the steps it did not run."""

    trial: int | None
    params: dict[str, Any]
    steps: int
    horizon: int
    dtype: str
    signal: str | None = None  # the signal that predicts the earliest failure
    trend: str = "flat"  # linear | power | exponential | drops | flat
    rate: str = ""
    last: float | None = None  # the signal's last value
    limit: float | None = None
    predicted_step: int | None = None
    overflow: bool = False  # the gradient norm's limit is the overflow the trail saw

    @property
    def at_risk(self) -> bool:
        return self.predicted_step is not None and self.predicted_step < self.horizon

    @property
    def text(self) -> str:
        if self.predicted_step is None:
            return f"trial {self.trial}: no growing trend"
        name = SIGNALS.get(self.signal or "", self.signal)
        if self.signal == "loss_scale":
            how = (
                f"the loss scale drops {self.rate} (now {self.last:.3g}); it would reach "
                f"{self.limit:g}, where an overflow is a failure,"
            )
        else:
            grows = "polynomially" if self.trend == "power" else f"{self.trend}ly"
            where = f"{self.dtype}'s {self.limit:.3g}"
            if self.signal == "grad_norm" and self.overflow:
                where = f"{self.limit:.3g}, where the gradient overflows at the lowest loss scale"
            how = (
                f"{name} grows {grows}, {self.rate} ({self.last:.3g} at step "
                f"{self.steps - 1}); it would pass {where}"
            )
        verdict = "at risk" if self.at_risk else "not at risk"
        return (
            f"trial {self.trial} is {verdict}: {how} at step ~{self.predicted_step} "
            f"(horizon {self.horizon})"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "trial": self.trial,
            "params": self.params,
            "at_risk": self.at_risk,
            "predicted_step": self.predicted_step,
            "signal": self.signal,
            "trend": self.trend,
            "rate": self.rate,
            "last": self.last,
            "limit": self.limit,
            "dtype": self.dtype,
            "steps": self.steps,
            "horizon": self.horizon,
            "text": self.text,
        }


def _least_squares(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float, float]:
    """Intercept, slope and the slope's t statistic (inf for a perfect fit)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return my, 0.0, 0.0
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    a = my - b * mx
    sse = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys, strict=True))
    if n <= 2 or sse <= 1e-300:
        return a, b, math.inf if b else 0.0
    stderr = math.sqrt(sse / (n - 2) / sxx)
    return a, b, (b / stderr if stderr > 0 else math.inf)


def fit(values: Sequence[float], start: int = 0) -> Fit | None:
    """The growth trend of positive ``values`` (step ``start`` onward), or None if none."""
    points = [(start + i, v) for i, v in enumerate(values) if math.isfinite(v) and v > 0]
    if len(points) < MIN_POINTS:
        return None
    xs = [float(x) for x, _ in points]
    logs = [math.log(v) for _, v in points]
    fits = []
    a, b, t = _least_squares(xs, [v for _, v in points])
    if b > 0:
        sse = sum(
            (ly - math.log(max(a + b * x, 1e-300))) ** 2 for x, ly in zip(xs, logs, strict=True)
        )
        fits.append(Fit("linear", a, b, t, sse))
    for kind, ts in (("exponential", xs), ("power", [math.log1p(x) for x in xs])):
        a, b, t = _least_squares(ts, logs)
        if b > 0:
            sse = sum((ly - a - b * x) ** 2 for x, ly in zip(ts, logs, strict=True))
            fits.append(Fit(kind, a, b, t, sse))
    if not fits:
        return None
    # the closest on a log scale; a tie (a power of 1 is a line) goes to the simpler kind
    best = min(fits, key=lambda f: f.sse * (1 + 1e-9 * (f.kind == "power")))
    if best.t < MIN_T or best.value(xs[-1]) < MIN_GROWTH * best.value(xs[0]):
        return None
    return best


def window(values: Sequence[float]) -> tuple[int, list[float]]:
    """The latter part of a trail that a trend is fitted over: its second half, and at
    least ``MIN_POINTS`` steps. Early steps follow the warm-up, not the trend."""
    size = max(MIN_POINTS, len(values) // 2)
    start = max(0, len(values) - size)
    return start, list(values[start:])


def _scale_drops(scales: Sequence[float], min_scale: float) -> tuple[float, float] | None:
    """Halvings per step over the window, and the steps to ``min_scale`` at that rate."""
    _, part = window(scales)
    if len(part) < MIN_POINTS:
        return None
    drops = sum(b < a for a, b in pairwise(part))
    if drops < MIN_DROPS or part[-1] <= min_scale:
        return None
    per_step = drops / (len(part) - 1)
    return per_step, math.log2(part[-1] / min_scale) / per_step


def overflow_norm(result: TrialResult) -> float | None:
    """Under a GradScaler, the scaled gradient norm at which the trail saw an overflow.

    A step whose gradient overflows is skipped: the weights do not move, so the next
    step with a finite gradient shows the norm that overflowed at the skipped step's
    scale. The smallest such ``scale * norm`` is the overflow the scaled gradient meets
    (where one value of the backward passes the compute dtype's range, which the norm
    over all the weights says only through this ratio). None when nothing overflowed.
    """
    grads, scales = result.grad_norm, result.loss_scale
    found = None
    for step, (grad, scale) in enumerate(zip(grads, scales, strict=False)):
        if math.isfinite(grad):
            continue
        after = next((g for g in grads[step + 1 :] if math.isfinite(g)), None)
        if after is not None and scale * after > 0:
            found = scale * after if found is None else min(found, scale * after)
    return found


def forecast(result: TrialResult, horizon: int, min_loss_scale: float = 1.0) -> Forecast | None:
    """The trial's forecast; None for a trial that is not finite or too short to fit."""
    if result.outcome != "finite" or len(result.loss) < MIN_POINTS:
        return None
    dtype = result.compute_dtype
    limit = LIMITS.get(dtype, LIMITS["float32"])
    out = Forecast(result.number, dict(result.params), len(result.loss), horizon, dtype)
    # the loss is computed in float32 under autocast; in the weights' dtype otherwise
    loss_limit = LIMITS["float32"] if result.loss_scale else limit
    # under a GradScaler a gradient is a failure only when it overflows at the lowest
    # scale: the unscaled norm then has to reach the overflow the trail saw, that far down
    overflow = overflow_norm(result) if result.loss_scale else None
    grad_limit = limit if overflow is None else overflow / min_loss_scale
    candidates = []
    for signal, top in (("logit_absmax", limit), ("grad_norm", grad_limit), ("loss", loss_limit)):
        trail = getattr(result, signal)
        start, part = window(trail)
        trend = fit(part, start)
        if trend is None:
            continue
        step = trend.crossing(top)
        if step is not None and step > len(trail) - 1:
            candidates.append((step, signal, trend.kind, trend.rate, trail[-1], top))
    drops = _scale_drops(result.loss_scale, min_loss_scale) if result.loss_scale else None
    if drops is not None:
        per_step, steps_left = drops
        step = len(result.loss_scale) - 1 + steps_left
        rate = f"by half every {1 / per_step:.3g} steps"
        candidates.append(
            (step, "loss_scale", "drops", rate, result.loss_scale[-1], min_loss_scale)
        )
    if candidates:
        step, out.signal, out.trend, out.rate, out.last, out.limit = min(candidates)
        out.predicted_step = int(min(math.ceil(step), 2**62))
        out.overflow = out.signal == "grad_norm" and overflow is not None
    return out


def horizon_of(steps: int, setting: int) -> int:
    """``search.horizon``: the steps it says, or ten times the trial's steps (-1)."""
    return setting if setting > 0 else 10 * steps


def at_risk(
    results: Iterable[TrialResult], horizon: int, min_loss_scale: float = 1.0
) -> list[Forecast]:
    """The finite trials predicted to fail within ``horizon`` steps, earliest first."""
    found = []
    for result in results:
        predicted = forecast(result, horizon, min_loss_scale)
        if predicted is not None and predicted.at_risk:
            found.append(predicted)
    return sorted(found, key=lambda f: (f.predicted_step, f.trial if f.trial is not None else -1))


def format_at_risk(items: Sequence[dict[str, Any]], most: int = 5) -> str:
    """The at-risk trials for the terminal, from ``ranking.json``'s ``at_risk``."""
    if not items:
        return ""
    head = (
        f"at risk: {len(items)} finite run(s) whose trend would pass the dtype's range "
        "within the horizon (not NaN, never a cause)"
    )
    lines = [head, *(f"  {item['text']}" for item in items[:most])]
    if len(items) > most:
        lines.append(f"  ... and {len(items) - most} more in ranking.json")
    return "\n".join(lines)


def at_risk_score(
    result: TrialResult, score: float | None, horizon: int, min_loss_scale: float
) -> float | None:
    """The search's score for a run: a finite run forecast to pass its dtype's range
    within ``horizon`` steps scores 0.9 to 0.999, the sooner the higher: above every
    finite run that is not at risk and below every NaN run, so focus spends trials near it."""
    if result.outcome != "finite" or score is None:
        return score
    found = forecast(result, horizon, min_loss_scale)
    if found is None or not found.at_risk or found.predicted_step is None:
        return score
    return max(score, min(0.999, 0.9 + 0.099 * (1 - found.predicted_step / horizon)))
