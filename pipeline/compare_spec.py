"""A comparison's declaration (``conf/compare/<name>.yaml``) as typed, frozen groups, each
checked when built; every error names its ``compare.<key>``.

A comparison declares arms (a pretraining experiment plus overrides each, or none: scratch),
the data every unit reads (``data``: overrides, any datamodule; ``overrides``: any other
override for every unit, e.g. a smaller encoder or ``trainer.precision``), seeds, label fractions, downstream
modes (``probe``: logistic regression on frozen features; ``finetune``), the pretraining
budget (equal reconstruction steps; an arm may instead take explicit epochs, e.g. another
arm's wall time), one primary endpoint and its key secondaries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from evaluation.statistics import ALTERNATIVES
from evaluation.test_set_noise import METRICS

MODES = ("probe", "finetune")


def _fail(key: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"compare.{key}={value!r} is invalid; allowed: {allowed}")


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise _fail(key, value, allowed)


def _known(key: str, given: Mapping, allowed: set[str]) -> None:
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise ValueError(f"compare.{key} has unknown key(s) {unknown}; known: {sorted(allowed)}")


@dataclass(frozen=True)
class Arm:
    """One pretraining arm. ``experiment`` None: no pretraining (a random encoder for probes,
    training from random weights for fine-tuning). ``stage``: the pretraining stage of a pipeline
    experiment (None for a one-stage experiment). ``uses_labels``: the pretraining reads training
    labels (MLO-MAE's levels II / III): it then runs once per label fraction with
    ``data.mlo.label_fraction`` set, so it sees only that fraction's labels. ``epochs``: explicit
    pretraining epochs (full passes) instead of the comparison's step budget.
    ``downstream_experiment`` / ``downstream_overrides``: this arm's own downstream recipe (e.g. a
    supervised baseline: another network, oversampling, a synthetic training set), in place of /
    added to the comparison's. ``links``: {config key of this arm's pretraining: another arm}: the
    key is set to that arm's same-seed pretrained checkpoint (e.g. AutoMAE's
    ``model.masking.source``, the MAE whose attention it reads); that arm pretrains first."""

    name: str
    label: str
    experiment: str | None = None
    stage: str | None = "pretrain"
    overrides: tuple[str, ...] = ()
    uses_labels: bool = False
    epochs: int | None = None
    downstream_experiment: str | None = None
    downstream_overrides: tuple[str, ...] = ()
    links: tuple[tuple[str, str], ...] = ()

    @property
    def pretrains(self) -> bool:
        return self.experiment is not None

    def lean(self) -> dict:
        """The fields that differ from an empty arm's (a new field with a falsy default leaves
        registered plans and cached units as they were)."""
        raw = {**asdict(self), "overrides": list(self.overrides), "downstream_overrides": list(self.downstream_overrides),
               "links": dict(self.links)}
        return {k: v for k, v in raw.items() if not is_unset(k, v)}


def is_unset(key: str, value) -> bool:
    """Whether an arm field is left out of its lean form: empty or falsy values, except ``stage:
    None`` (a one-stage experiment), which differs from the default ``pretrain``."""
    return value in (None, False, [], (), {}) and not (key == "stage" and value is None)


@dataclass(frozen=True)
class Budget:
    """Every pretraining arm takes ``level1_steps`` reconstruction steps in ``epochs`` epochs
    (an MLO-MAE cycle holds ``data.mlo.cadence[0]`` of them); arms with explicit epochs excepted."""

    level1_steps: int
    epochs: int

    def __post_init__(self) -> None:
        _require(self.level1_steps >= 1, "budget.level1_steps", self.level1_steps, "an integer >= 1")
        _require(self.epochs >= 1, "budget.epochs", self.epochs, "an integer >= 1")


@dataclass(frozen=True)
class Endpoint:
    """``arm`` minus ``versus`` on ``metric`` (test split) after ``mode`` at ``fraction`` labels.
    ``direction``: the alternative (``greater``: arm better); ``alpha``: the level; ``margin``:
    the equivalence margin (TOST), or None; ``effect``: the smallest difference that matters
    (for the sample-size planner)."""

    arm: str
    versus: str
    mode: str
    fraction: float
    metric: str = "auc"
    direction: str = "greater"
    alpha: float = 0.05
    margin: float | None = None
    effect: float | None = None

    @property
    def key(self) -> str:
        return f"{self.arm} - {self.versus} | {self.mode} {self.fraction:g} | {self.metric}"


@dataclass(frozen=True)
class Downstream:
    """``experiment``: the classifier experiment whose network encodes for probes and is
    fine-tuned; ``probe_c``: the logistic-regression C grid (chosen on validation);
    ``finetune``: {fraction: [epochs, validate every n epochs]}, the fractions fine-tuned at (a
    subset of the comparison's); ``overrides`` for both."""

    experiment: str
    probe_c: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
    finetune: Mapping[float, tuple[int, int]] = field(default_factory=dict)
    overrides: tuple[str, ...] = ()
    batch_size: int = 512


@dataclass(frozen=True)
class Diagnostics:
    """Mask evidence (``evaluation.mask_evidence``) of ``arms`` (None: every pretraining arm but
    ``reference``) on the first ``images`` validation images: trained vs untrained vs
    image-independent nulls, the reconstruction difficulty scored by the same seed's ``reference``
    arm (e.g. plain MAE)."""

    reference: str
    images: int = 128
    arms: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ComparisonSpec:
    name: str
    description: str
    data: tuple[str, ...]
    overrides: tuple[str, ...]
    trainer: str
    seeds: tuple[int, ...]
    fractions: tuple[float, ...]
    modes: tuple[str, ...]
    metrics: tuple[str, ...]
    arms: Mapping[str, Arm]
    budget: Budget
    downstream: Downstream
    primary: Endpoint | None  # None: an exploratory comparison (no confirmatory verdict)
    secondaries: tuple[Endpoint, ...]
    references: tuple[str, ...]
    quick: bool = False
    n_boot: int = 2000  # paired image-bootstrap resamples (metrics other than binary AUC)
    diagnostics: Diagnostics | None = None

    def __post_init__(self) -> None:
        _require(len(self.seeds) >= 2 and len(set(self.seeds)) == len(self.seeds), "seeds", list(self.seeds),
                 "at least 2 distinct integers (a paired comparison over seeds)")
        _require(all(0 < f <= 1 for f in self.fractions) and self.fractions, "fractions", list(self.fractions),
                 "label fractions in (0, 1]")
        for mode in self.modes:
            _require(mode in MODES, "modes", list(self.modes), str(list(MODES)))
        for metric in self.metrics:
            _require(metric in METRICS, "metrics", list(self.metrics), str(list(METRICS)))
        _require(self.n_boot >= 100, "n_boot", self.n_boot, "an integer >= 100")
        if self.diagnostics is not None:
            ref = self.arms.get(self.diagnostics.reference)
            _require(ref is not None and ref.pretrains and not ref.uses_labels, "diagnostics.reference",
                     self.diagnostics.reference, "a pretraining arm that reads no labels (e.g. plain MAE)")
            _require(self.diagnostics.images >= 2, "diagnostics.images", self.diagnostics.images, "an integer >= 2")
            for arm in self.diagnostics.arms or ():
                _require(arm in self.arms and self.arms[arm].pretrains, "diagnostics.arms", list(self.diagnostics.arms),
                         f"pretraining arms of {sorted(self.arms)}")
        for arm in self.arms.values():
            for key, other in arm.links:
                _require(arm.pretrains and other in self.arms and self.arms[other].pretrains and not self.arms[other].links
                         and not self.arms[other].uses_labels, f"arms.{arm.name}.links.{key}", other,
                         "a pretraining arm without links of its own that reads no labels")
        for ref in self.references:
            _require(ref in self.arms, "references", list(self.references), f"arm names {sorted(self.arms)}")
        if self.primary is None and self.secondaries:
            raise ValueError("compare.secondaries need a compare.primary: key secondaries belong to a registered "
                             "primary; an exploratory comparison (primary: null) compares every arm with the references")
        if self.primary is not None:
            self._check_endpoint("primary", self.primary)
        for i, end in enumerate(self.secondaries):
            self._check_endpoint(f"secondaries[{i}]", end)
        if "finetune" in self.modes:
            _require(bool(self.downstream.finetune) and set(self.downstream.finetune) <= set(self.fractions),
                     "downstream.finetune", dict(self.downstream.finetune),
                     f"{{fraction: [epochs, validate_every]}} for the fractions to fine-tune at, of {list(self.fractions)}")

    def _check_endpoint(self, key: str, end: Endpoint) -> None:
        for which in ("arm", "versus"):
            _require(getattr(end, which) in self.arms, f"{key}.{which}", getattr(end, which),
                     f"an arm name {sorted(self.arms)}")
        _require(end.mode in self.modes, f"{key}.mode", end.mode, f"a mode of compare.modes {list(self.modes)}")
        allowed = list(self.downstream.finetune) if end.mode == "finetune" else list(self.fractions)
        _require(end.fraction in allowed, f"{key}.fraction", end.fraction, f"a fraction of the mode's {allowed}")
        _require(end.metric in self.metrics, f"{key}.metric", end.metric,
                 f"a metric of compare.metrics {list(self.metrics)}")
        _require(end.direction in ALTERNATIVES, f"{key}.direction", end.direction, str(list(ALTERNATIVES)))
        _require(0 < end.alpha < 0.5, f"{key}.alpha", end.alpha, "(0, 0.5)")
        _require(end.margin is None or end.margin > 0, f"{key}.margin", end.margin, "null or > 0")
        _require(end.effect is None or end.effect > 0, f"{key}.effect", end.effect, "null or > 0")


ARM_KEYS = {"name", "label", "experiment", "stage", "overrides", "uses_labels", "epochs", "downstream_experiment",
            "downstream_overrides", "links"}
ENDPOINT_KEYS = {"arm", "versus", "mode", "fraction", "metric", "direction", "alpha", "margin", "effect"}
TOP_KEYS = {"name", "description", "data", "overrides", "trainer", "seeds", "fractions", "modes", "metrics", "arms", "budget",
            "downstream", "primary", "secondaries", "references", "quick", "out_dir", "run_dir", "allow_exploratory",
            "n_boot", "diagnostics"}


def _endpoint(key: str, raw: Mapping) -> Endpoint:
    _known(key, raw, ENDPOINT_KEYS)
    missing = sorted({"arm", "versus", "mode", "fraction"} - set(raw))
    if missing:
        raise ValueError(f"compare.{key} needs {missing}")
    return Endpoint(**{k: (float(v) if k in ("fraction", "alpha", "margin", "effect") and v is not None else v)
                       for k, v in raw.items()})


def _arm(name: str, raw: Mapping | None) -> Arm:
    raw = dict(raw or {})
    _known(f"arms.{name}", raw, ARM_KEYS)  # "name": a registered plan's copy of the key
    epochs = raw.get("epochs")
    _require(epochs is None or int(epochs) >= 1, f"arms.{name}.epochs", epochs, "null or an integer >= 1")
    return Arm(name=name, label=str(raw.get("label", name)), experiment=raw.get("experiment"),
               stage=raw.get("stage", "pretrain"), overrides=tuple(raw.get("overrides") or ()),
               uses_labels=bool(raw.get("uses_labels", False)), epochs=None if epochs is None else int(epochs),
               downstream_experiment=raw.get("downstream_experiment"),
               downstream_overrides=tuple(raw.get("downstream_overrides") or ()),
               links=tuple((str(k), str(v)) for k, v in (raw.get("links") or {}).items()))


def build_spec(raw: Mapping) -> ComparisonSpec:
    """The checked ``ComparisonSpec`` of a plain ``compare`` mapping (the composed config)."""
    _known("", raw, TOP_KEYS)
    if "primary" not in raw:
        raise ValueError("compare.primary is missing: declare the primary endpoint, or primary: null for an "
                         "exploratory comparison")
    for key in ("name", "data", "seeds", "fractions", "modes", "arms", "budget", "downstream"):
        if raw.get(key) is None:
            raise ValueError(f"compare.{key} is missing; a comparison declares it (see conf/compare/)")
    down = dict(raw["downstream"])
    _known("downstream", down, {"experiment", "probe_c", "finetune", "overrides", "batch_size"})
    finetune = {float(f): (int(v[0]), int(v[1])) for f, v in (down.get("finetune") or {}).items()}
    downstream = Downstream(experiment=down["experiment"], probe_c=tuple(float(c) for c in down.get("probe_c") or
                                                                          Downstream.probe_c),
                            finetune=finetune, overrides=tuple(down.get("overrides") or ()),
                            batch_size=int(down.get("batch_size", 512)))
    budget = dict(raw["budget"])
    _known("budget", budget, {"level1_steps", "epochs"})
    arms = {name: _arm(name, spec) for name, spec in raw["arms"].items()}
    return ComparisonSpec(
        name=str(raw["name"]), description=str(raw.get("description", "")), data=tuple(raw["data"]),
        overrides=tuple(raw.get("overrides") or ()),
        trainer=str(raw.get("trainer", "cpu")), seeds=tuple(int(s) for s in raw["seeds"]),
        fractions=tuple(float(f) for f in raw["fractions"]), modes=tuple(raw["modes"]),
        metrics=tuple(raw.get("metrics") or ("auc",)), arms=arms,
        budget=Budget(int(budget.get("level1_steps", 0)), int(budget.get("epochs", 0))), downstream=downstream,
        primary=None if raw["primary"] is None else _endpoint("primary", raw["primary"]),
        secondaries=tuple(_endpoint(f"secondaries[{i}]", s) for i, s in enumerate(raw.get("secondaries") or ())),
        references=tuple(raw.get("references") or ()), quick=bool(raw.get("quick", False)),
        n_boot=int(raw.get("n_boot", 2000)), diagnostics=_diagnostics(raw.get("diagnostics")))


def _diagnostics(raw: Mapping | None) -> Diagnostics | None:
    if raw is None:
        return None
    _known("diagnostics", raw, {"reference", "images", "arms"})
    if "reference" not in raw:
        raise ValueError("compare.diagnostics needs a reference arm (the MAE that scores reconstruction difficulty)")
    arms = raw.get("arms")
    return Diagnostics(str(raw["reference"]), int(raw.get("images", 128)), None if arms is None else tuple(arms))
