"""The comparison engine (pipeline/compare*.py, evaluation/comparison_report.py): declarations,
pre-registration, a quick comparison on an image folder, and the report rebuilt from its files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from datamodules.export import export_npz
from datamodules.synthetic import write_synthetic_medmnist
from pipeline.compare import run_comparison
from pipeline.compare_registry import RegistrationError
from pipeline.compare_spec import build_spec
from pipeline.compare_units import Unit, plan_units

REPO = Path(__file__).resolve().parents[1]
TINY = ["encoder.depth=1", "encoder.embed_dim=32", "encoder.num_heads=2", "data.num_workers=0"]


def declaration(folder: Path, arms: dict, seeds=(0, 1), **extra) -> dict:
    """A quick comparison on ``folder`` (an image folder with a predefined split)."""
    return {
        "name": "folder_quick", "description": "test", "quick": True, "seeds": list(seeds), "fractions": [0.5],
        "modes": ["probe"], "metrics": ["auc", "bal_acc"], "trainer": "cpu", "overrides": TINY,
        "data": ["data=image_folder", f"data.root={folder}", "data.channels=1", "data.img_size=28"],
        "budget": {"level1_steps": 4, "epochs": 2}, "arms": arms, "references": ["scratch"],
        "downstream": {"experiment": "vit_small", "probe_c": [0.1, 1.0]},
        "primary": {"arm": "mae", "versus": "scratch", "mode": "probe", "fraction": 0.5, "metric": "auc",
                    "direction": "greater", "alpha": 0.05, "effect": 0.02},
        "secondaries": [{"arm": "mae", "versus": "scratch", "mode": "probe", "fraction": 0.5, "metric": "bal_acc",
                         "direction": "greater"}], **extra}


PLAIN = ["++stages.pretrain.data.batch_size=8", "stages.pretrain.model.mask_diagnostics=false",
         "stages.pretrain.callbacks.mask_maps=null"]
MAE = {"label": "MAE", "experiment": "mae_small", "overrides": PLAIN}
MLO = {"label": "MLO-MAE", "experiment": "mlo_mae_small", "uses_labels": True, "overrides": PLAIN}


def cfg_of(decl: dict, out: Path, **extra):
    return OmegaConf.create({"action": "run", "unit": None, **extra,
                             "compare": {**decl, "out_dir": str(out), "run_dir": str(out / "runs"), "n_boot": 200}})


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Own images (not MedMNIST): 2 classes of PNGs in train / val / test folders."""
    out = tmp_path_factory.mktemp("folder")
    npz = write_synthetic_medmnist(out / "src.npz", num_classes=2, channels=1, proportions=[0.4, 0.6], n_train=48,
                                   n_val=24, n_test=40, seed=4)
    export_npz(npz, out, class_names=["benign", "malignant"])
    return out / "images"


def test_a_declaration_names_its_bad_key():
    good = declaration(Path("/x"), {"scratch": None, "mae": MAE})
    build_spec(good)
    for bad, message in (
        ({**good, "seeds": [0]}, r"compare\.seeds=\[0\] is invalid"),
        ({**good, "arms": {"scratch": None, "mae": {**MAE, "experment": "x"}}}, r"compare\.arms\.mae has unknown"),
        ({**good, "primary": {**good["primary"], "arm": "mlo"}}, r"compare\.primary\.arm='mlo'"),
        ({**good, "primary": {**good["primary"], "fraction": 0.1}}, r"compare\.primary\.fraction=0\.1"),
        ({**good, "metrics": ["f1"]}, r"compare\.metrics=\['f1'\]"),
        ({**good, "modes": ["probe", "finetune"]}, r"compare\.downstream\.finetune"),
        ({**good, "arms": {"scratch": None, "mae": {**MAE, "links": {"model.masking.source": "scratch"}}}},
         r"compare\.arms\.mae\.links\.model\.masking\.source='scratch'"),
    ):
        with pytest.raises(ValueError, match=message):
            build_spec(bad)


def test_units_of_a_label_reading_arm_run_once_per_fraction():
    spec = build_spec(declaration(Path("/x"), {"scratch": None, "mae": MAE, "mlo": MLO}, fractions=[0.1, 0.5]))
    ids = [u.id for u in plan_units(spec)]
    assert ids[:2] == ["pretrain-mae-s0", "pretrain-mae-s1"]
    assert "pretrain-mlo-s0-f0.1" in ids and "pretrain-mlo-s1-f0.5" in ids and "pretrain-mlo-s0" not in ids
    assert Unit("probe", "mlo", 1, 0.5).pretraining(spec) == Unit("pretrain", "mlo", 1, 0.5)
    assert Unit("probe", "mae", 1, 0.5).pretraining(spec) == Unit("pretrain", "mae", 1, None)
    assert Unit("probe", "scratch", 1, 0.5).pretraining(spec) is None


def test_units_stored_before_an_arm_field_existed_still_count():
    from pipeline.compare_units import same_settings, unit_settings

    spec = build_spec(declaration(Path("/x"), {"scratch": None, "mae": MAE}))
    now = unit_settings(spec, Unit("pretrain", "mae", 0))
    older = {**now, "arm": {k: v for k, v in now["arm"].items()}}  # as older code wrote it: every field
    older["arm"].update(uses_labels=False, epochs=None, downstream_overrides=[])
    assert "links" not in now["arm"] and same_settings(older, now)
    assert not same_settings({**older, "seed": 1}, now)
    diagnosed = build_spec(declaration(Path("/x"), {"scratch": None, "mae": MAE, "hpm": MAE},
                                       diagnostics={"reference": "mae", "arms": ["hpm"]}))
    settings = unit_settings(diagnosed, Unit("diagnose", "hpm", 0))
    assert same_settings(json.loads(json.dumps(settings)), settings)  # as stored: tuples are lists


def test_linked_pretrainings_wait_for_their_source_and_finetuning_runs_at_its_fractions(tmp_path):
    from pipeline.compare import UnitStore, pending_phases

    automae = {**MAE, "experiment": "mae_automae_small", "links": {"model.masking.source": "mae"}}
    spec = build_spec(declaration(Path("/x"), {"scratch": None, "mae": MAE, "automae": automae},
                                  fractions=[0.1, 0.5], modes=["probe", "finetune"],
                                  downstream={"experiment": "vit_small", "finetune": {0.1: [2, 1]}}))
    first, linked, rest = pending_phases(spec, UnitStore(tmp_path))
    assert [u.id for u in first] == ["pretrain-mae-s0", "pretrain-mae-s1"]
    assert [u.id for u in linked] == ["pretrain-automae-s0", "pretrain-automae-s1"]
    assert linked[0].links(spec) == [("model.masking.source", Unit("pretrain", "mae", 0))]
    assert {u.fraction for u in rest if u.kind == "finetune"} == {0.1}
    assert {u.fraction for u in rest if u.kind == "probe"} == {0.1, 0.5}


@pytest.fixture(scope="module")
def quick_run(folder, tmp_path_factory) -> tuple[Path, dict, Path]:
    """A quick comparison (scratch, MAE; 2 seeds) on the image folder, run once: (out, declaration, report)."""
    out = tmp_path_factory.mktemp("quick") / "cmp"
    decl = declaration(folder, {"scratch": {"label": "scratch"}, "mae": MAE})
    return out, decl, run_comparison(cfg_of(decl, out))


def _copy(out: Path, to: Path) -> Path:
    import shutil

    return Path(shutil.copytree(out, to))


def test_quick_comparison_on_an_image_folder_registers_runs_reports_and_rebuilds_alike(quick_run, tmp_path):
    out, decl, _ = quick_run
    out = _copy(out, tmp_path / "cmp")  # this test rewrites a unit: the fixture's folder stays as it ran
    report = out / "report.md"
    plan = json.loads((out / "plan.json").read_text())
    assert plan["plan"]["primary"]["arm"] == "mae" and len(plan["sha256"]) == 64
    units = sorted(p.stem for p in (out / "units").glob("*.json"))
    assert units == ["pretrain-mae-s0", "pretrain-mae-s1", "probe-mae-s0-f0.5", "probe-mae-s1-f0.5",
                     "probe-scratch-s0-f0.5", "probe-scratch-s1-f0.5"]
    pre = json.loads((out / "units" / "pretrain-mae-s0.json").read_text())
    assert pre["level1_steps"] == 2 and pre["epochs"] == 1 and Path(pre["ckpt"]).is_file()  # quick: 2 batches
    probe = json.loads((out / "units" / "probe-mae-s0-f0.5.json").read_text())
    assert probe["data_identity"]["kind"] == "folder" and len(probe["test"]["scores"]) == 40
    text = report.read_text()
    assert "QUICK MODE" in text and plan["sha256"] in text and "## The primary endpoint (registered)" in text
    assert "95% paired t over 2 seeds" in text and "t over 2 seeds + test-image variance" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["primary"]["verdict"] in ("supported", "not separable at this budget")
    # a second run computes nothing and writes the same report
    before = {p.name: p.stat().st_mtime_ns for p in (out / "units").glob("*.json")}
    run_comparison(cfg_of(decl, out))
    assert {p.name: p.stat().st_mtime_ns for p in (out / "units").glob("*.json")} == before
    # a fresh process rebuilds the report from plan.json and the unit JSONs alone
    (out / "report.md").rename(out / "first.md")
    (out / "summary.json").rename(out / "first.json")
    subprocess.run([sys.executable, "-m", "pipeline.compare", "action=report", f"compare.out_dir={out}"],
                   cwd=REPO, check=True, capture_output=True, timeout=300)
    assert (out / "report.md").read_text() == (out / "first.md").read_text()
    assert (out / "summary.json").read_text() == (out / "first.json").read_text()
    # a unit made on other data is not pooled with the rest
    unit = out / "units" / "probe-scratch-s1-f0.5.json"
    result = json.loads(unit.read_text())
    result["data_identity"]["fingerprint"] = "0" * 64
    unit.write_text(json.dumps(result))
    with pytest.raises(ValueError, match=r"different data and cannot be pooled(.|\n)*probe', 'scratch', 0.5, 1"):
        run_comparison(cfg_of(decl, out, action="report"))


def test_a_registered_primary_cannot_change_once_results_exist(quick_run, tmp_path):
    ran, decl, _ = quick_run
    moved = {**decl, "primary": {**decl["primary"], "direction": "two-sided"}}
    fresh = tmp_path / "fresh"
    run_comparison(cfg_of(decl, fresh, action="plan"))  # registered, nothing run: changes are free
    run_comparison(cfg_of(moved, fresh, action="plan"))
    assert json.loads((fresh / "plan.json").read_text())["plan"]["primary"]["direction"] == "two-sided"
    out = _copy(ran, tmp_path / "cmp")  # registered with direction greater, and its units ran
    with pytest.raises(RegistrationError, match=r"differs in \['primary'\] and unit results exist"):
        run_comparison(cfg_of(moved, out))
    allowed = cfg_of(moved, out)
    allowed.compare.allow_exploratory = True
    report = run_comparison(allowed)
    assert "EXPLORATORY: the registered plan was changed after results existed (primary)" in report.read_text()
    record = json.loads((out / "plan.json").read_text())
    assert record["exploratory"] and record["amendments"][0]["changed"] == ["primary"]


@pytest.mark.slow
def test_three_arms_three_seeds_quick_on_an_image_folder(folder, tmp_path):
    """The done-when run: scratch, MAE and MLO-MAE (levels II / III on the fraction's labels) x 3 seeds."""
    out = tmp_path / "cmp"
    decl = declaration(folder, {"scratch": {"label": "scratch"}, "mae": MAE, "mlo": MLO}, seeds=(0, 1, 2),
                       diagnostics={"reference": "mae", "images": 16})
    report = run_comparison(cfg_of(decl, out)).read_text()
    assert len(list((out / "units").glob("*.json"))) == 6 + 3 + 9  # pretrainings, diagnoses, probes
    mlo = json.loads((out / "units" / "pretrain-mlo-s2-f0.5.json").read_text())
    assert mlo["level1_steps"] == 4  # quick: 2 cycles of 2 level-I steps
    evidence = json.loads((out / "units" / "diagnose-mlo-s1-f0.5.json").read_text())["evidence"]
    assert {"trained", "untrained", "shuffled", "mean_intensity", "centre", "random"} <= set(evidence)
    assert evidence["mean_intensity"]["rho_intensity_within"] == 0.0  # an image-independent map: null level
    assert "MLO-MAE" in report and "3 seeds" in report and "### MLO-MAE (labels 50%): 3 seeds" in report
    subprocess.run([sys.executable, "compare.py", "action=report", f"compare.out_dir={out}"], cwd=REPO, check=True,
                   capture_output=True, timeout=300)
    assert (out / "report.md").read_text() == report


def test_comparison_configs_compose_and_declare_valid_plans():
    """Every conf/compare/*.yaml composes with conf/compare.yaml and builds a checked spec."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from pipeline.cli import CONF_DIR
    from pipeline.compare import comparison_spec

    names = sorted(p.stem for p in (CONF_DIR / "compare").glob("*.yaml"))
    assert {"confirmatory_pneumonia", "pilot_pneumonia"} <= set(names)
    for name in names:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("compare", overrides=[f"compare={name}"])
        spec = comparison_spec(cfg)
        assert spec.name == name and (spec.primary is None or spec.primary.arm in spec.arms)
    raw = yaml.safe_load((CONF_DIR / "compare" / "confirmatory_pneumonia.yaml").read_text())
    assert raw["primary"]["effect"] > 0 and len(raw["seeds"]) >= 5


def _report_data(signal: dict[str, float], seeds=range(6)):
    """ComparisonData of arms whose test scores separate 100 positives from 100 negatives by
    ``signal[arm]`` standard deviations (fresh noise per seed), probe at 10 %."""
    import numpy as np

    from evaluation.comparison_report import ComparisonData

    labels = np.repeat([1, 0], 100)
    rng = np.random.default_rng(0)
    downstream = {("probe", arm, 0.1, s): {"test": {"scores": (labels * k + rng.normal(size=200)).tolist(),
                                                    "decisions": labels.tolist()}}
                  for arm, k in signal.items() for s in seeds}
    endpoint = {"mode": "probe", "fraction": 0.1, "metric": "auc", "direction": "greater", "alpha": 0.05}
    plan = {"name": "t", "arms": {a: {"label": a.upper()} for a in signal}, "seeds": list(seeds), "modes": ["probe"],
            "fractions": [0.1], "metrics": ["auc"], "references": ["b"], "data": [], "diagnostics": None,
            "primary": {**endpoint, "arm": "a", "versus": "b", "effect": 0.02},
            "secondaries": [{**endpoint, "arm": "c", "versus": "b", "margin": 0.05},
                            {**endpoint, "arm": "d", "versus": "b", "margin": 0.05}]}
    return ComparisonData(plan, {}, downstream, labels, n_boot=200), plan


def test_secondaries_are_gated_by_the_primary_and_their_tost_is_holm_adjusted():
    from evaluation.comparison_report import _equivalence, comparison_markdown, endpoint_rows
    from evaluation.statistics import adjust

    registration = {"sha256": "x", "registered_at": "now", "exploratory": False, "amendments": []}
    data, plan = _report_data({"a": 2.0, "b": 0.5, "c": 0.5, "d": 0.5})
    text, summary = comparison_markdown(data, registration)
    assert summary["primary"]["verdict"] == "supported"
    assert all(not r["verdict"].startswith("exploratory") for r in summary["secondaries"])
    raw = [_equivalence(e, data.paired(e["arm"], e["versus"], "probe", 0.1, "auc", "greater", 0.95))[0]
           for e in plan["secondaries"]]
    holm = adjust(raw, "holm")
    rows, _ = endpoint_rows(data, plan["secondaries"], holm=True)
    assert min(holm) == pytest.approx(2 * min(raw)) and all(f"p {h:.3f} (±0.05)" in row for h, row in zip(holm, rows))

    weak, _ = _report_data({"a": 0.5, "b": 0.5, "c": 2.0, "d": 0.5})  # the primary fails; c beats b
    text, summary = comparison_markdown(weak, registration)
    assert summary["primary"]["verdict"] == "not separable at this budget"
    assert summary["secondaries"][0]["verdict"].startswith("exploratory (primary not supported): ")
    assert "fixed sequence" in text


def test_an_incomplete_secondary_stays_in_the_holm_family():
    from evaluation.comparison_report import endpoint_rows

    data, plan = _report_data({"a": 2.0, "b": 0.5, "c": 1.0, "d": 0.5})
    del data.downstream["probe", "d", 0.1, 5]  # d lacks one seed
    endpoints = [{**e, "margin": None} for e in plan["secondaries"]]
    _, results = endpoint_rows(data, endpoints, holm=True)
    assert results[1]["verdict"] == "incomplete"
    alone = max(results[0]["p_t"], results[0]["p_seeds_images"])
    assert results[0]["p_holm"] == pytest.approx(min(1.0, 2 * alone))  # a family of 2, not of 1


def test_the_figure_has_one_legend_entry_per_arm_and_only_the_fractions_each_mode_ran(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from evaluation.comparison_report import interval_figure

    data, plan = _report_data({"a": 2.0, "b": 0.5, "c": 0.5})
    plan.update(modes=["probe", "finetune"], fractions=[0.01, 0.1])
    for (_mode, arm, f, s), value in list(data.downstream.items()):  # fine-tuning at 10 % only
        data.downstream["finetune", arm, f, s] = value
    captured, savefig = {}, plt.Figure.savefig
    monkeypatch.setattr(plt.Figure, "savefig", lambda fig, *a, **k: (captured.setdefault("fig", fig), savefig(fig, *a, **k)))
    interval_figure(data, tmp_path / "c.png")
    fig = captured["fig"]
    assert (tmp_path / "c.png").stat().st_size > 0
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["A (n = 6)", "B (n = 6)", "C (n = 6)"]
    assert [[t.get_text() for t in ax.get_xticklabels()] for ax in fig.axes] == [["10%"], ["10%"]]


def test_a_hand_edited_plan_is_refused(folder, tmp_path):
    out = tmp_path / "cmp"
    decl = declaration(folder, {"scratch": {"label": "scratch"}, "mae": MAE})
    run_comparison(cfg_of(decl, out, action="plan"))
    record = json.loads((out / "plan.json").read_text())
    record["plan"]["primary"]["alpha"] = 0.1  # the hash left as it was
    (out / "plan.json").write_text(json.dumps(record))
    with pytest.raises(RegistrationError, match="does not hash to its sha256"):
        run_comparison(cfg_of(decl, out, action="report"))


def test_a_one_stage_arm_keeps_its_stage_through_the_registered_plan():
    from pipeline.compare_registry import plan_of

    raw = declaration(Path("/nowhere"), {"scratch": {"label": "scratch"},
                                         "mae": {**MAE, "stage": None}})
    spec = build_spec(raw)
    again = build_spec(json.loads(json.dumps(plan_of(spec))))
    assert spec.arms["mae"].stage is None and again.arms["mae"].stage is None and again == spec


def test_the_probe_chooses_c_on_validation_and_keeps_a_column_per_class():
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from evaluation.linear_probe import fit_probe

    rng = np.random.default_rng(0)
    y = {"train": np.repeat([0, 1], 40), "val": np.repeat([0, 1], 40), "test": np.repeat([0, 1], 40)}
    signal = {"train": y["train"], "val": y["val"], "test": 1 - y["test"]}  # test's feature is reversed
    x = {s: np.c_[signal[s] + rng.normal(0, 1, 80), rng.normal(size=(80, 20))] for s in y}
    auc = {(cc, s): roc_auc_score(y[s], fit_probe(x, y, [cc], 2)[1][s][:, 1]) for cc in (1e-4, 1.0)
           for s in ("val", "test")}
    assert auc[1.0, "val"] > auc[1e-4, "val"] and auc[1e-4, "test"] > auc[1.0, "test"]  # they disagree
    c, _ = fit_probe(x, y, [1e-4, 1.0], num_classes=2)
    assert c == 1.0  # validation's choice
    three = {s: np.r_[v, [2]] if s != "train" else v for s, v in y.items()}  # class 2 absent from training
    x3 = {s: np.r_[x[s], x[s][:1]] if s != "train" else x[s] for s in x}
    _, probs = fit_probe(x3, three, [1.0], num_classes=3)
    assert probs["test"].shape == (81, 3) and (probs["test"][:, 2] == 0).all()
    np.testing.assert_allclose(probs["test"].sum(1), 1)


def test_a_run_folder_of_other_settings_is_cleared_before_a_unit_reruns(tmp_path):
    from pipeline.compare import _run_dir_for

    run = _run_dir_for(tmp_path / "pretrain-mae-s0", {"budget": 216})
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_text("interrupted")
    assert (_run_dir_for(run, {"budget": 216}) / "checkpoints" / "last.ckpt").is_file()  # same settings: resumes
    assert not (_run_dir_for(run, {"budget": 468}) / "checkpoints").exists()  # amended: nothing of the old run
    assert json.loads((run / "settings.json").read_text()) == {"budget": 468}
