"""A comparison's report, built from its registered plan and its unit results alone.

Inputs are plain values (what ``plan.json`` and the unit JSONs hold): the plan, the pretraining
results keyed by (arm, seed, fraction or None) and the downstream results keyed by (mode, arm,
fraction, seed), each with its per-image test outputs, and the test labels. Every number is
recomputed from the per-image outputs, so the same files give the same report in any process.

- **Primary endpoint** (registered; confirmatory where the plan was registered as such): the
  paired t over seeds (in the declared direction) *and* the seeds x test-images test must both reject at alpha for "supported";
  TOST against the declared margin for "equivalent"; otherwise "not separable at this budget".
- **Key secondaries**: the same tests, p-values (and TOST p) Holm-adjusted over the secondaries;
  tested after the primary (fixed sequence): exploratory where the primary is not supported.
- **Exploratory**: every arm against each reference, two-sided, with Holm and Benjamini-Hochberg
  adjusted p over the whole table next to the raw p. Nothing there is "supported".
- **Planner**: the seeds the primary would need for its declared effect at power 0.8, from this
  run's paired standard deviation and test-image variance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.data_identity import SYNTHETIC_BANNER
from evaluation.sample_size import seeds_needed
from evaluation.statistics import (
    SUPPORTED,
    TestResult,
    adjust,
    mean_interval,
    paired_t,
    seeds_images_test,
    shared_image_variance,
    tost,
    tost_from,
    verdict,
)
from evaluation.test_set_noise import image_variance, metric_value

METRIC_NAMES = {"auc": "AUC", "acc": "ACC", "bal_acc": "balanced acc."}
POWER = 0.8


def outputs_for(metric: str, result: dict) -> np.ndarray:
    """The per-image test outputs ``metric`` reads: scores (AUC), medmnist's decisions (ACC:
    ``p1 > 0.5`` or argmax), the validation-tuned decisions (balanced accuracy)."""
    scores = np.asarray(result["test"]["scores"])
    if metric == "auc":
        return scores
    if metric == "acc":
        return (scores > 0.5).astype(int) if scores.ndim == 1 else scores.argmax(1)
    return np.asarray(result["test"]["decisions"])


@dataclass(frozen=True)
class Paired:
    """One paired comparison: per-seed values of both arms and the tests."""

    a: list[float]
    b: list[float]
    t: TestResult
    both: TestResult
    image_method: str
    image_var: float  # the test-image variance shared by every seed
    seeds: list[int]


class ComparisonData:
    """Access to the results of one comparison (see the module docstring for the keys)."""

    def __init__(self, plan: dict, pretrain: dict, downstream: dict, labels: np.ndarray, n_boot: int = 2000,
                 diagnose: dict | None = None):
        self.plan, self.pretrain, self.downstream, self.labels = plan, pretrain, downstream, labels
        self.n_boot, self.diagnose = n_boot, diagnose or {}

    def complete_seeds(self, mode: str, arms: list[str], fraction: float) -> list[int]:
        return [s for s in self.plan["seeds"] if all((mode, a, fraction, s) in self.downstream for a in arms)]

    def values(self, metric: str, mode: str, arm: str, fraction: float, seeds: list[int]) -> list[float]:
        return [metric_value(metric, outputs_for(metric, self.downstream[mode, arm, fraction, s]), self.labels)
                for s in seeds]

    def paired(self, arm: str, versus: str, mode: str, fraction: float, metric: str,
               alternative: str = "two-sided", level: float = 0.95) -> Paired | None:
        seeds = self.complete_seeds(mode, [arm, versus], fraction)
        if len(seeds) < 2:
            return None
        a, b = (self.values(metric, mode, x, fraction, seeds) for x in (arm, versus))
        outs = [[outputs_for(metric, self.downstream[mode, x, fraction, s]) for s in seeds] for x in (arm, versus)]
        var = image_variance(metric, outs[0], outs[1], self.labels, n_boot=self.n_boot, seed=0)
        return Paired(a, b, paired_t(a, b, alternative, level),
                      seeds_images_test(a, b, var.of_mean, var.per_seed, alternative, level), var.method,
                      shared_image_variance(var.of_mean, var.per_seed, len(seeds)), seeds)


def _fmt_p(p: float) -> str:
    return "-" if p != p else f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def _mean_sd(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def endpoint_rows(data: ComparisonData, endpoints: list[dict], holm: bool, gated: bool = False
                  ) -> tuple[list[str], list[dict]]:
    """Markdown rows and machine-readable results of registered endpoints; ``gated``: the primary
    was not supported, so by the fixed sequence these verdicts are exploratory."""
    labels = {name: arm["label"] for name, arm in data.plan["arms"].items()}
    rows, results = [], []
    tests = [data.paired(e["arm"], e["versus"], e["mode"], e["fraction"], e["metric"], e["direction"],
                         1 - e["alpha"]) for e in endpoints]
    n_seeds = len(data.plan["seeds"])
    # An endpoint without every seed stays in the family, as not rejected (p = 1): it must not
    # shrink the Holm correction of the others.
    raw = [max(p.t.p, p.both.p) if p and len(p.seeds) == n_seeds else 1.0 for p in tests]
    adjusted = adjust(raw, "holm") if holm else np.asarray(raw)
    equivalence = [_equivalence(e, p) if p and len(p.seeds) == n_seeds else None for e, p in zip(endpoints, tests)]
    eq_adjusted = adjust([q[0] if q else np.nan if not e.get("margin") else 1.0
                          for e, q in zip(endpoints, equivalence)], "holm") if holm else None
    for i, (e, p, p_adj) in enumerate(zip(endpoints, tests, adjusted)):
        name = (f"{labels[e['arm']]} − {labels[e['versus']]}, {e['mode']} at {e['fraction']:.0%} labels, test "
                f"{METRIC_NAMES[e['metric']]}, {e['direction']}, α = {e['alpha']:g}")
        if p is None or len(p.seeds) < n_seeds:
            rows.append(f"| {name} | incomplete: {0 if p is None else len(p.seeds)} of {n_seeds} seeds | | | | | |")
            results.append({"endpoint": e, "verdict": "incomplete"})
            continue
        eq = equivalence[i]
        if eq is not None and holm:  # the secondaries' TOSTs: Holm over the family too
            eq = (float(eq_adjusted[i]), bool(eq_adjusted[i] < e["alpha"]))
        if holm:  # the family of secondaries: both tests at the Holm-adjusted level
            both = TestResult(p.both.mean, p.both.se, p.both.statistic, p.both.df, float(p_adj), p.both.alternative,
                              p.both.interval)
            decision = verdict(both, None, e["alpha"], eq, e.get("margin"))
        else:
            decision = verdict(p.t, p.both, e["alpha"], eq, e.get("margin"))
        if gated:
            decision = f"exploratory (primary not supported): {decision}"
        tost_cell = "-" if eq is None else f"p {_fmt_p(eq[0])} (±{e['margin']:g})"
        p_cell = f"t: p {_fmt_p(p.t.p)}; seeds × images: p {_fmt_p(p.both.p)}" + (
            f"; Holm {_fmt_p(p_adj)}" if holm else "")
        rows.append(f"| {name} | {_mean_sd(p.a)} vs {_mean_sd(p.b)} | {p.t.mean:+.4f} | {p.t.interval} <br> "
                    f"{p.both.interval} | {p_cell} | {tost_cell} | **{decision}** |")
        results.append({"endpoint": e, "verdict": decision, "mean_difference": p.t.mean, "p_t": p.t.p,
                        "p_seeds_images": p.both.p, "p_holm": float(p_adj) if holm else None,
                        "t_interval": [p.t.interval.low, p.t.interval.high],
                        "seeds_images_interval": [p.both.interval.low, p.both.interval.high],
                        "image_variance_method": p.image_method, "seeds": p.seeds, "a": p.a, "b": p.b})
    return rows, results


def _equivalence(endpoint: dict, p) -> tuple[float, bool] | None:
    """(TOST p, equivalent) of a registered margin: the larger p of the TOST over seeds and of the
    TOST on the seeds x images statistic; None without a margin or a result."""
    if p is None or not endpoint.get("margin"):
        return None
    p_seed, ok_seed = tost(p.a, p.b, endpoint["margin"], endpoint["alpha"])
    p_both, ok_both = tost_from(p.both, endpoint["margin"], endpoint["alpha"])
    return max(p_seed, p_both), ok_seed and ok_both


ENDPOINT_HEADER = ["| endpoint | arm vs versus (mean ± sd over seeds) | mean difference | intervals | tests | "
                   "TOST | verdict |", "|---|---|---|---|---|---|---|"]


def mean_rows(data: ComparisonData) -> list[str]:
    """Each arm's mean, sample sd and 95 % t-interval over seeds, per mode, fraction and metric."""
    plan, rows = data.plan, ["| mode | labels | metric | arm | seeds | mean ± sd | 95 % t-interval of the mean |",
                             "|---|---|---|---|---|---|---|"]
    for mode in plan["modes"]:
        for fraction in plan["fractions"]:
            for metric in plan["metrics"]:
                for arm, spec in plan["arms"].items():
                    seeds = data.complete_seeds(mode, [arm], fraction)
                    if not seeds:
                        continue
                    vals = data.values(metric, mode, arm, fraction, seeds)
                    ci = mean_interval(vals) if len(vals) > 1 else None
                    rows.append(f"| {mode} | {fraction:.0%} | {METRIC_NAMES[metric]} | {spec['label']} | {len(seeds)} | "
                                f"{_mean_sd(vals)} | {'-' if ci is None else f'[{ci.low:.3f}, {ci.high:.3f}]'} |")
    return rows


def _seen(plan: dict, arm: str, ref: str) -> bool:
    """A reference compared with a later reference: the pair already appears the other way round."""
    refs = plan["references"]
    return arm in refs and refs.index(arm) < refs.index(ref)


def exploratory_rows(data: ComparisonData) -> list[str]:
    """Every arm against each reference, two-sided 95 %, Holm / BH over the table."""
    plan, labels = data.plan, {n: a["label"] for n, a in data.plan["arms"].items()}
    cells = [(mode, fraction, metric, arm, ref, data.paired(arm, ref, mode, fraction, metric))
             for mode in plan["modes"] for fraction in plan["fractions"] for metric in plan["metrics"]
             for arm in plan["arms"] for ref in plan["references"] if arm != ref and not _seen(plan, arm, ref)]
    cells = [c for c in cells if c[5] is not None]
    raw = [c[5].both.p for c in cells]
    holm, bh = adjust(raw, "holm"), adjust(raw, "bh")
    rows = ["| mode | labels | metric | arm | vs | difference [95 % t over seeds] | p (t) | p (seeds × images) | "
            "Holm | BH q |", "|---|---|---|---|---|---|---|---|---|---|"]
    for (mode, fraction, metric, arm, ref, p), h, q in zip(cells, holm, bh):
        rows.append(f"| {mode} | {fraction:.0%} | {METRIC_NAMES[metric]} | {labels[arm]} | {labels[ref]} | "
                    f"{p.t.mean:+.3f} [{p.t.interval.low:+.3f}, {p.t.interval.high:+.3f}] | {_fmt_p(p.t.p)} | "
                    f"{_fmt_p(p.both.p)} | {_fmt_p(h)} | {_fmt_p(q)} |")
    return rows


def diagnostics_lines(data: ComparisonData) -> list[str]:
    """Mask evidence per arm (and fraction): trained vs untrained vs nulls, t-intervals over seeds."""
    from evaluation.mask_evidence import evidence_table, seed_intervals

    if not data.diagnose:
        return []
    ref = data.plan["arms"][data.plan["diagnostics"]["reference"]]["label"]
    lines = ["## Mask diagnostics (exploratory)", "",
             f"On the first {data.plan['diagnostics']['images']} validation images; reconstruction difficulty "
             f"(`rho_recon*`) scored by the same seed's {ref} for every arm. `_within`: correlation within each "
             "patch position across images (0 for any image-independent map); `_shuffled`: the masker's draw paired "
             "with other images' content (what position alone gives). A masker shows image-dependent masking only "
             "where trained exceeds its untrained state and every null.", ""]
    for arm, fraction in sorted({(a, f) for a, f, _s in data.diagnose}, key=str):
        per_seed = [data.diagnose[arm, fraction, s] for s in data.plan["seeds"] if (arm, fraction, s) in data.diagnose]
        name = data.plan["arms"][arm]["label"] + ("" if fraction is None else f" (labels {fraction:.0%})")
        lines += [f"### {name}: {len(per_seed)} seeds", "", *evidence_table(seed_intervals(per_seed)), ""]
    return lines


def compute_rows(data: ComparisonData) -> list[str]:
    """Pretraining budget actually spent, per arm (mean over its units)."""
    rows = ["| arm | epochs | level-I steps | pretraining wall s (mean) | units |", "|---|---|---|---|---|"]
    for name, arm in data.plan["arms"].items():
        units = [r for (a, _s, _f), r in data.pretrain.items() if a == name]
        if not units:
            continue
        steps = sorted({u["level1_steps"] for u in units})
        rows.append(f"| {arm['label']} | {units[0]['epochs']} | {', '.join(map(str, steps))} | "
                    f"{np.mean([u['wall_s'] for u in units]):.0f} | {len(units)} |")
    return rows


def planner_lines(data: ComparisonData, primary: dict) -> list[str]:
    """Seeds the primary needs for its declared effect, from this run's noise."""
    p = data.paired(primary["arm"], primary["versus"], primary["mode"], primary["fraction"], primary["metric"],
                    primary["direction"])
    if p is None or not primary.get("effect"):
        return ["No planner: the primary has no declared effect or fewer than 2 complete seeds."]
    sd = float(np.std(np.subtract(p.a, p.b), ddof=1))
    alt = "greater" if primary["direction"] != "two-sided" else "two-sided"
    plain = seeds_needed(primary["effect"], sd, primary["alpha"], POWER, alt)
    counted = seeds_needed(primary["effect"], sd, primary["alpha"], POWER, alt, image_var=p.image_var)
    return [f"From this run ({len(p.seeds)} seeds): paired standard deviation over seeds {sd:.4f}; test-image "
            f"variance shared by every seed (what more seeds cannot average away) {p.image_var:.2e} "
            f"({p.image_method}).",
            f"Seeds for power {POWER:.0%} at a true difference of {primary['effect']:g} "
            f"({primary['direction']}, α = {primary['alpha']:g}): paired t alone {plain}; counting the test set "
            + (f"{counted}." if counted is not None else "no number of seeds suffices (the test set's own noise "
               "exceeds what the effect allows: a larger test set is needed).")]


def comparison_markdown(data: ComparisonData, registration: dict) -> tuple[str, dict]:
    """The report text and a summary (verdicts) of one comparison."""
    plan = data.plan
    primary, secondaries = plan["primary"], plan["secondaries"]
    lines = [f"# Comparison `{plan['name']}`", ""]
    if registration.get("synthetic"):
        lines += [f"> {SYNTHETIC_BANNER}.", ""]
    if plan.get("quick"):
        lines += ["> **QUICK MODE: a smoke run of every step on a sliver of the budget. Not evidence.**", ""]
    if registration["exploratory"]:
        changed = sorted({k for a in registration["amendments"] for k in a["changed"]})
        lines += [f"> **EXPLORATORY: the registered plan was changed after results existed ({', '.join(changed)}); "
                  "no verdict below is confirmatory.**", ""]
    lines += [plan.get("description") or "", "",
              f"Plan sha256 `{registration['sha256']}`, registered {registration['registered_at']} at commit "
              f"`{registration.get('code_commit') or '?'}` (`plan.json`). Data: {registration.get('data', '-')} "
              f"(`{' '.join(plan['data'])}`); {len(data.labels)} test images; seeds {plan['seeds']}.", ""]
    summary = {"name": plan["name"], "plan_sha256": registration["sha256"],
               "exploratory": registration["exploratory"] or primary is None, "quick": plan.get("quick", False)}
    if primary is None:
        lines += ["> **Exploratory comparison: no primary endpoint was registered, so nothing below is a "
                  "confirmatory finding.**", ""]
    else:
        rows, primary_result = endpoint_rows(data, [primary], holm=False)
        lines += ["## The primary endpoint (registered)", "",
                  "\"supported\" needs the paired t over seeds and the seeds × test-images test (the test set's "
                  "own noise counted) both to reject at α in the registered direction.", "", *ENDPOINT_HEADER,
                  *rows, ""]
        summary["primary"] = primary_result[0]
    if secondaries:
        gated = primary is not None and not str(summary["primary"].get("verdict", "")).startswith(SUPPORTED)
        rows, results = endpoint_rows(data, secondaries, holm=True, gated=gated)
        lines += ["## Key secondaries (registered; Holm over the secondaries)", "",
                  "Tested after the primary (fixed sequence): they are claims only where the primary is "
                  "supported; otherwise their verdicts are exploratory.", "", *ENDPOINT_HEADER, *rows, ""]
        summary["secondaries"] = results
    lines += ["## Pretraining compute", "", *compute_rows(data), "", "## Every arm", "", *mean_rows(data), "",
              "## Exploratory: every arm against each reference", "",
              "Two-sided, 95 %; Holm and Benjamini-Hochberg adjust the seeds × test-images p over this whole "
              "table. Exploratory: a small p here is a lead for a new registered comparison, not a finding.", "",
              *exploratory_rows(data), "", *diagnostics_lines(data)]
    if primary is not None:
        lines += ["## Sample size for the primary", "", *planner_lines(data, primary), ""]
    return "\n".join(lines), summary


def interval_figure(data: ComparisonData, path, metric: str | None = None) -> None:
    """Test ``metric`` against the label fraction, per mode and arm: mean and 95 % t-interval over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plan = data.plan
    metric = metric or (plan["primary"] or {}).get("metric") or plan["metrics"][0]
    arms, fractions = list(plan["arms"]), plan["fractions"]
    fig, axes = plt.subplots(1, len(plan["modes"]), figsize=(5.5 * len(plan["modes"]), 4), squeeze=False)
    colours = plt.get_cmap("tab10" if len(arms) <= 10 else "tab20").colors
    for ax, mode in zip(axes[0], plan["modes"]):
        shown = [f for f in fractions if any(len(data.complete_seeds(mode, [a], f)) >= 2 for a in arms)] or fractions
        for i, arm in enumerate(arms):
            xs, means, lows, highs, counts = [], [], [], [], set()
            for j, f in enumerate(shown):
                seeds = data.complete_seeds(mode, [arm], f)
                if len(seeds) < 2:
                    continue
                values = data.values(metric, mode, arm, f, seeds)
                ci = mean_interval(values)
                xs.append(j + (i - len(arms) / 2) * 0.06)
                means.append(float(np.mean(values)))
                lows.append(ci.low)
                highs.append(ci.high)
                counts.add(len(seeds))
            if xs:
                m = np.asarray(means)
                n = "/".join(map(str, sorted(counts)))
                ax.errorbar(xs, m, yerr=[m - lows, np.asarray(highs) - m], marker="o", capsize=3,
                            label=f"{plan['arms'][arm]['label']} (n = {n})", color=colours[i % len(colours)])
        ax.set_xticks(range(len(shown)), [f"{f:.0%}" for f in shown])
        ax.set_xlim(-0.5, len(shown) - 0.5)
        ax.set_xlabel("training labels used")
        ax.set_title(mode)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"test {METRIC_NAMES[metric]}: mean, 95 % t-interval over seeds")
    fig.suptitle(f"{plan['name']}: seeds {plan['seeds']}" + (" (QUICK: not evidence)" if plan.get("quick") else ""),
                 fontsize=10)
    fig.tight_layout()
    entries = {}  # label -> handle: one entry per arm (and seed count), from whichever panel drew it
    for ax in axes[0]:
        for h, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, h)
    fig.legend(list(entries.values()), list(entries), fontsize=8, loc="upper center",
               bbox_to_anchor=(0.5, 0.0), ncol=min(3, max(1, len(entries))))  # below the axes: never over a bar
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
