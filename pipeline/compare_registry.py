"""Pre-registration of a comparison: its plan is written and hashed before the first unit runs.

``<out>/plan.json`` holds the plan (arms, data, seeds, fractions, modes, budget, downstream
recipe, primary endpoint and key secondaries, alpha, margin), its SHA-256, the code commit and
the time it was registered. A later run with another plan is:

- re-registered when no unit result exists yet (nothing was seen);
- refused once results exist (the primary, the seeds or anything else of the plan chosen after
  seeing numbers would make the confirmatory test meaningless) unless
  ``compare.allow_exploratory=true``: then the change is appended to ``amendments`` and the
  report says at its top that the comparison is exploratory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from core.io import atomic_write_text
from pipeline.compare_spec import ComparisonSpec, build_spec

log = logging.getLogger("compare")


class RegistrationError(ValueError):
    """The plan differs from the registered one after results exist."""


@dataclass(frozen=True)
class Registration:
    sha256: str
    registered_at: str
    code_commit: str | None
    exploratory: bool
    amendments: tuple[dict, ...]
    plan: dict


def plan_of(spec: ComparisonSpec) -> dict:
    """The registered content of ``spec`` as plain JSON values (fractions keyed as strings)."""
    plan = asdict(spec)
    plan["arms"] = {name: arm.lean() for name, arm in spec.arms.items()}
    if plan["diagnostics"] is None:  # an optional block left out stays out of older plans' canonical form
        del plan["diagnostics"]
    elif plan["diagnostics"]["arms"] is None:
        del plan["diagnostics"]["arms"]
    down = plan["downstream"]
    down["finetune"] = {f"{f:g}": list(v) for f, v in down["finetune"].items()}
    down["probe_c"], down["overrides"] = list(down["probe_c"]), list(down["overrides"])
    return json.loads(json.dumps(plan))  # tuples -> lists


def plan_hash(plan: dict) -> str:
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()


def _changed(old: dict, new: dict) -> list[str]:
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def register(out: Path, spec: ComparisonSpec, has_results: bool, code_commit: str | None,
             allow_exploratory: bool = False) -> Registration:
    """The registration of ``spec`` in ``out`` (written when new; see the module docstring)."""
    plan, path = plan_of(spec), out / "plan.json"
    record = _read_record(path) if path.is_file() else None
    if record is not None:  # compared in today's canonical form (a plan written by older code)
        record["plan"] = plan_of(build_spec(record["plan"]))
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if record is None or (not has_results and record["plan"] != plan):
        if record is not None:
            log.warning("The plan of %s changed before any unit ran (%s): registered anew.", out,
                        ", ".join(_changed(record["plan"], plan)))
        record = {"plan": plan, "sha256": plan_hash(plan), "registered_at": now, "code_commit": code_commit,
                  "exploratory": False, "amendments": []}
        atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    elif record["plan"] != plan:
        changed = _changed(record["plan"], plan)
        if not allow_exploratory:
            raise RegistrationError(
                f"the plan registered in {path} (sha256 {record['sha256'][:12]}, {record['registered_at']}) "
                f"differs in {changed} and unit results exist: changing a registered plan after seeing results "
                "is refused. Restore the registered values, start a new comparison (another compare.name or "
                "compare.out_dir), or pass compare.allow_exploratory=true to go on with the report marked "
                "exploratory.")
        record["amendments"].append({"at": now, "changed": changed, "previous_sha256": record["sha256"],
                                     "sha256": plan_hash(plan)})
        record.update(plan=plan, sha256=plan_hash(plan), exploratory=True)
        atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
        log.warning("The registered plan changed after results existed (%s): the report is exploratory.", changed)
    return _registration(record)


def read_registration(out: Path) -> Registration:
    """The registration written in ``out`` (for rebuilding a report from the files alone)."""
    path = out / "plan.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: no comparison was registered in {out}")
    return _registration(_read_record(path))


def _read_record(path: Path) -> dict:
    """``plan.json``, refused when its plan is not the one its SHA-256 names (edited by hand or
    merged badly)."""
    record = json.loads(path.read_text())
    if plan_hash(record["plan"]) != record["sha256"]:
        raise RegistrationError(f"{path}: its plan does not hash to its sha256 {record['sha256'][:12]} (edited "
                                "after registration?). Restore it from version control, or register a new "
                                "comparison (another compare.name or compare.out_dir).")
    return record


def _registration(record: dict) -> Registration:
    return Registration(record["sha256"], record["registered_at"], record.get("code_commit"),
                        bool(record["exploratory"]), tuple(record["amendments"]), record["plan"])
