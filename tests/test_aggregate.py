"""aggregate.py on a fabricated multirun folder, against hand-computed means and stds."""

import json
import statistics

import pytest
import yaml

from evaluation import aggregate


def _job(root, num, overrides, metrics):
    job = root / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    return job


@pytest.fixture()
def multirun(tmp_path):
    root = tmp_path / "multirun"
    values = {("0.1", 0): 0.70, ("0.1", 1): 0.74, ("0.1", 2): 0.78, ("1.0", 0): 0.90, ("1.0", 1): 0.92}
    for i, ((frac, seed), auc) in enumerate(values.items()):
        _job(root, i, ["experiment=quickstart", f"data.label_fraction={frac}", f"seed={seed}"],
             {"test/auc": auc, "test/acc": auc - 0.1})
    _job(root, 5, ["experiment=quickstart", "data.label_fraction=1.0", "seed=2"], None)  # crashed job
    return root


def test_mean_and_std_per_group_and_missing_runs_reported(multirun, capsys):
    assert aggregate.main([str(multirun), "--metrics", "test/auc", "test/acc",
                           "--plot-x", "data.label_fraction"]) == 0
    out, err = capsys.readouterr()
    assert "5: no metrics.json" in err
    rows = (multirun / "aggregate.csv").read_text().splitlines()
    assert rows[0] == ("data.label_fraction,experiment,n,test/auc_mean,test/auc_std,test/auc_defined_runs,"
                       "test/acc_mean,test/acc_std,test/acc_defined_runs")
    first = rows[1].split(",")
    assert first[:3] == ["0.1", "quickstart", "3"]
    assert float(first[3]) == pytest.approx(statistics.mean([0.70, 0.74, 0.78]))
    assert float(first[4]) == pytest.approx(statistics.stdev([0.70, 0.74, 0.78])) and first[5] == "3"
    second = rows[2].split(",")
    assert second[2] == "2" and float(second[3]) == pytest.approx(0.91)
    assert float(second[4]) == pytest.approx(statistics.stdev([0.90, 0.92]))
    assert "| 0.1 | quickstart | 3 | 0.7400 +- 0.0400 |" in out
    assert (multirun / "aggregate_test_auc.png").stat().st_size > 1000


def test_metric_that_no_run_logged_is_an_error(multirun):
    with pytest.raises(SystemExit, match=r"no run logged \['test/f2'\].*test/auc"):
        aggregate.main([str(multirun), "--metrics", "test/f2"])


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match="no run with metrics.json"):
        aggregate.main([str(tmp_path)])


def test_evaluate_outputs_without_overrides_form_one_group(tmp_path):
    root = tmp_path / "ensembles"
    for seed, auc in enumerate([0.80, 0.84, 0.86]):
        (root / str(seed)).mkdir(parents=True)
        (root / str(seed) / "metrics.json").write_text(json.dumps({"test/auc": auc, "test/acc": 0.7}))
    assert aggregate.main([str(root), "--metrics", "test/auc"]) == 0
    rows = (root / "aggregate.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].split(",")[0] == "3"
    assert float(rows[1].split(",")[1]) == pytest.approx(statistics.mean([0.80, 0.84, 0.86]))
