"""The comparison engine: ``medmae-compare compare=<name>`` (``python compare.py``).

A comparison (``conf/compare/<name>.yaml``, checked by ``compare_spec``) is registered
(``compare_registry``: plan written and hashed before the first unit runs), then its units
(``compare_units``: pretrainings, then probes and fine-tunings) run, then its report is written
from the unit results alone (``evaluation.comparison_report``).

- ``action=run`` (default): register, run what is missing, report. Every unit's result is a small
  JSON in ``<compare.out_dir>/units/`` (meant to be committed; checkpoints and run folders go to
  ``compare.run_dir``): an interrupted comparison resumes where it stopped, on this machine or
  another (a pretraining whose checkpoint is missing here runs again when a downstream unit still
  needs it).
- ``action=units``: the same without the report (e.g. on a GPU machine; rebuild it elsewhere).
- ``action=report``: rebuild ``report.md``, ``summary.json`` and the figure from ``plan.json``
  and the unit JSONs alone (no data, no training).
- ``action=plan``: register and print the plan and its hash, run nothing.
- Units run in this process, or through the Hydra launcher the command line picks
  (``hydra/launcher=local`` for parallel local processes, ``hydra/launcher=slurm`` for a cluster):
  each pending unit then is one job of a Hydra multirun of this command with ``action=unit``.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from pipeline.cli import CONF_DIR, register_resolvers

log = logging.getLogger("compare")
ACTIONS = ("run", "units", "report", "plan", "unit")
IN_PROCESS_LAUNCHERS = ("basic", None)


class UnitStore:
    """Unit results as ``<root>/<unit id>.json``, each with the settings it was computed with;
    a result counts only while its settings are the plan's."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, unit) -> Path:
        return self.root / f"{unit.id}.json"

    def get(self, unit, settings: dict) -> dict | None:
        path = self.path(unit)
        if not path.is_file():
            return None
        from pipeline.compare_units import same_settings

        result = json.loads(path.read_text())
        return result if same_settings(result.get("settings", {}), settings) else None

    def put(self, unit, settings: dict, result: dict) -> None:
        from core.io import atomic_write_text

        atomic_write_text(self.path(unit), json.dumps({"settings": settings, **result}, indent=1) + "\n")

    def any(self) -> bool:
        return self.root.is_dir() and any(self.root.glob("*.json"))


def comparison_spec(cfg: DictConfig):
    from pipeline.compare_spec import build_spec

    raw = OmegaConf.to_container(cfg.compare, resolve=True)
    for key in ("out_dir", "run_dir", "allow_exploratory"):
        raw.pop(key, None)
    return build_spec(raw)


def _git_commit() -> str | None:
    from pipeline.run import git_commit

    return git_commit()


def _run_dir_for(run_dir: Path, settings: dict) -> Path:
    """``run_dir`` holding ``settings.json``: an interrupted run of the same settings resumes in it;
    one left by other settings (a plan amended after results) is cleared first, so nothing of it
    (its ``last.ckpt``) leaks into the new unit."""
    import shutil

    from core.io import atomic_write_text

    record = run_dir / "settings.json"
    if record.is_file() and json.loads(record.read_text()) != settings:
        log.warning("%s holds a run of other settings: cleared", run_dir)
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record, json.dumps(settings, indent=2, sort_keys=True))
    return run_dir


def run_one(spec, unit, store: UnitStore, run_root: Path) -> dict:
    """Run ``unit`` (its pretraining's checkpoint must exist for a downstream unit) and store it."""
    from pipeline.compare_units import run_unit, unit_settings

    def checkpoint(pre) -> str | None:
        if pre is None:
            return None
        found = store.get(pre, unit_settings(spec, pre))
        if found is None or not Path(found["ckpt"]).is_file():
            raise RuntimeError(f"unit {unit.id} needs the checkpoint of {pre.id}, which is not here; run the "
                               "comparison with action=run (it reruns that pretraining first)")
        return found["ckpt"]

    log.info("unit %s ...", unit.id)
    run_dir = _run_dir_for(run_root / unit.id, unit_settings(spec, unit))
    result = run_unit(spec, unit, run_dir, checkpoint(unit.pretraining(spec)),
                      checkpoint(unit.reference(spec)), {k: checkpoint(pre) for k, pre in unit.links(spec)})
    result["code_commit"] = _git_commit()
    store.put(unit, unit_settings(spec, unit), result)
    log.info("unit %s: done in %.0f s", unit.id, result.get("wall_s", float("nan")))
    return result


def pending_phases(spec, store: UnitStore) -> list[list]:
    """[pretrainings without links, linked pretrainings, downstream and diagnose units] to run:
    missing results, and pretrainings whose checkpoint is not on this machine while a missing
    unit needs it."""
    from pipeline.compare_units import plan_units, unit_settings

    units = plan_units(spec)
    done = {u: store.get(u, unit_settings(spec, u)) for u in units}
    downstream = [u for u in units if u.kind != "pretrain" and done[u] is None]
    needed = {p for u in downstream for p in (u.pretraining(spec), u.reference(spec))} - {None}
    pretrain = [u for u in units if u.kind == "pretrain" and
                (done[u] is None or (u in needed and not Path(done[u]["ckpt"]).is_file()))]
    needed |= {p for u in pretrain for _k, p in u.links(spec)}
    pretrain += [u for u in units if u.kind == "pretrain" and u not in pretrain and u in needed
                 and not Path(done[u]["ckpt"]).is_file()]
    linked = [u for u in pretrain if u.links(spec)]
    return [[u for u in pretrain if u not in linked], linked, downstream]


def launch(units: list, cfg: DictConfig, launcher: str, overrides: list[str], hydra_overrides: list[str]) -> None:
    """Run ``units`` as one Hydra multirun of this command through ``launcher`` (a subprocess
    that waits for every job)."""
    keep = [o for o in overrides if o.split("=")[0].lstrip("+~") not in ("action", "unit")]
    command = [sys.executable, "-m", "pipeline.compare", "--multirun", *keep, "action=unit",
               "unit=" + ",".join(u.id for u in units), f"hydra/launcher={launcher}",
               *[o for o in hydra_overrides if not o.startswith("hydra/launcher=")]]
    log.info("launching %d unit(s) through hydra/launcher=%s", len(units), launcher)
    subprocess.run(command, check=True, cwd=Path.cwd())


def write_report(out: Path) -> Path:
    """``report.md``, ``summary.json`` and ``comparison.png`` in ``out`` from its files alone."""
    import numpy as np

    from core.data_identity import check_same_data, describe, is_synthetic
    from core.io import atomic_write_text
    from evaluation.comparison_report import ComparisonData, comparison_markdown, interval_figure
    from pipeline.compare_registry import read_registration
    from pipeline.compare_spec import build_spec
    from pipeline.compare_units import plan_units, unit_settings

    registration = read_registration(out)
    plan = registration.plan
    spec = build_spec(plan)
    store = UnitStore(out / "units")
    pretrain, downstream, diagnose, labels = {}, {}, {}, None
    for unit in plan_units(spec):
        result = store.get(unit, unit_settings(spec, unit))
        if result is None:
            continue
        if unit.kind == "pretrain":
            pretrain[unit.arm, unit.seed, unit.fraction] = result
            continue
        if unit.kind == "diagnose":
            diagnose[unit.arm, unit.fraction, unit.seed] = result["evidence"]
            continue
        downstream[unit.kind, unit.arm, unit.fraction, unit.seed] = result
        if labels is None:
            labels = np.asarray(result["test_labels"])
        elif not np.array_equal(labels, result["test_labels"]):
            raise ValueError(f"unit {unit.id} was tested on other images than the comparison's other units; "
                             "its data overrides differ: rerun it")
    if labels is None:
        raise ValueError(f"{out} holds no downstream result yet: nothing to report")
    identities = {f"unit {key}": r.get("data_identity") for key, r in {**pretrain, **downstream}.items()}
    check_same_data(identities)  # a ValueError naming the units whose data differ
    data = ComparisonData(plan, pretrain, downstream, labels, spec.n_boot, diagnose)
    identity = next((i for i in identities.values() if i), None)
    reg = {"data": describe(identity), "synthetic": is_synthetic(identity), "sha256": registration.sha256, "registered_at": registration.registered_at,
           "code_commit": registration.code_commit, "exploratory": registration.exploratory,
           "amendments": list(registration.amendments)}
    text, summary = comparison_markdown(data, reg)
    interval_figure(data, out / "comparison.png")
    text += "\n![test metric against the label fraction](comparison.png)\n"
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, sort_keys=True, default=float) + "\n")
    atomic_write_text(out / "report.md", text)
    return out / "report.md"


def run_comparison(cfg: DictConfig, launcher: str | None = None, overrides: list[str] | None = None,
                   hydra_overrides: list[str] | None = None) -> Path | None:
    """``cfg.action`` on the comparison ``cfg.compare`` (see the module docstring); returns the
    report's path (None for ``plan`` / ``unit``)."""
    from pipeline.compare_registry import register
    from pipeline.compare_units import plan_units

    action = cfg.get("action", "run")
    if action not in ACTIONS:
        raise ValueError(f"action={action!r} is invalid; allowed: {list(ACTIONS)}")
    out = Path(cfg.compare.out_dir)
    if action == "report":
        return write_report(out)
    run_root = Path(cfg.compare.run_dir)
    spec = comparison_spec(cfg)
    store = UnitStore(out / "units")
    registration = register(out, spec, store.any(), _git_commit(), bool(cfg.compare.get("allow_exploratory")))
    if action == "plan":
        print(json.dumps(registration.plan, indent=2))
        print(f"plan sha256 {registration.sha256} ({out / 'plan.json'}); {len(plan_units(spec))} units")
        return None
    if action == "unit":
        wanted = [u for u in plan_units(spec) if u.id == cfg.get("unit")]
        if not wanted:
            raise ValueError(f"unit={cfg.get('unit')!r} is not a unit of comparison {spec.name!r}")
        run_one(spec, wanted[0], store, run_root)
        return None
    for phase in pending_phases(spec, store):
        if not phase:
            continue
        if launcher in IN_PROCESS_LAUNCHERS:
            for unit in phase:
                run_one(spec, unit, store, run_root)
        else:
            launch(phase, cfg, launcher, overrides or [], hydra_overrides or [])
    missing = [u.id for u in pending_phases(spec, store)[-1]]
    if missing:
        raise RuntimeError(f"{len(missing)} unit(s) produced no result: {missing[:8]}; see their logs in {run_root}")
    return write_report(out) if action == "run" else None


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="compare")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    launcher = hc.runtime.choices.get("hydra/launcher")
    try:
        report = run_comparison(cfg, launcher, list(hc.overrides.task), list(hc.overrides.hydra))
    except ValueError as err:  # a bad declaration or a refused registration: one message
        print(f"\nerror: {err}", file=sys.stderr)
        sys.exit(1)
    if report is not None:
        print(f"\nreport: {report}")


def compare_main() -> None:
    """``compare.py`` / ``medmae-compare``."""
    register_resolvers()
    main()


if __name__ == "__main__":
    compare_main()
