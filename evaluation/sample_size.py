"""How many seeds a paired comparison needs, planned from a pilot.

The paired t-test over seeds has power from the noncentral t distribution (statsmodels'
``TTestPower`` for the plain case). The test that also counts the test set
(``statistics.seeds_images_test``) has SE^2 = sd^2 / n + v, where ``v`` (the test-image
covariance that every pair of seeds shares, ``statistics.shared_image_variance``: the part of the
test set's noise that seeds cannot average away) does not shrink with seeds: its power is computed the same way
with that SE and Welch-Satterthwaite degrees of freedom, and when sqrt(v) alone is too large for
the effect, no number of seeds reaches the power (``seeds_needed`` returns None: a larger test
set, not more seeds, is what the comparison needs).
"""

from __future__ import annotations

import math

from scipy import stats


def power(n: int, effect: float, sd: float, alpha: float = 0.05, alternative: str = "greater",
          image_var: float = 0.0) -> float:
    """Power of the paired test over ``n`` seeds to detect a true mean difference ``effect``
    (in the direction of ``alternative``; two-sided: either) given the paired standard deviation
    over seeds ``sd`` and the shared test-image variance ``image_var``."""
    if n < 2:
        raise ValueError(f"a paired test needs at least 2 seeds, got {n}")
    if sd < 0 or image_var < 0:
        raise ValueError("sd and image_var must be >= 0")
    seed_part = sd**2 / n
    se = math.sqrt(seed_part + image_var)
    if se == 0:
        return 1.0
    df = (seed_part + image_var) ** 2 / (seed_part**2 / (n - 1)) if seed_part > 0 else 1e9
    nc = effect / se
    if alternative == "two-sided":
        crit = stats.t.ppf(1 - alpha / 2, df)
        # The lower tail by symmetry: scipy's nct.cdf(-crit, df, nc) is NaN for large nc.
        result = stats.nct.sf(crit, df, nc) + stats.nct.sf(crit, df, -nc)
    elif alternative in ("greater", "less"):
        result = stats.nct.sf(stats.t.ppf(1 - alpha, df), df, nc)  # ``effect``: the size in the declared direction
    else:
        raise ValueError(f"alternative={alternative!r} is invalid; allowed: two-sided, greater, less")
    if not math.isfinite(result):
        raise ArithmeticError(f"power is not finite at n={n}, effect={effect}, sd={sd}, image_var={image_var}")
    return float(result)


def seeds_needed(effect: float, sd: float, alpha: float = 0.05, target_power: float = 0.8,
                 alternative: str = "greater", image_var: float = 0.0, max_seeds: int = 1000) -> int | None:
    """The smallest number of seeds (>= 2) whose power reaches ``target_power``, or None when
    ``max_seeds`` do not (the test-image variance alone may forbid it)."""
    if not effect > 0:
        raise ValueError(f"the effect that matters must be > 0 (in the declared direction), got {effect}")
    lo, hi = 2, max_seeds
    if power(hi, effect, sd, alpha, alternative, image_var) < target_power:
        return None
    while lo < hi:  # power grows with n
        mid = (lo + hi) // 2
        if power(mid, effect, sd, alpha, alternative, image_var) >= target_power:
            hi = mid
        else:
            lo = mid + 1
    return lo
