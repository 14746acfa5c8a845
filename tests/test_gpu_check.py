"""The one-call GPU check: prepare.sh (wheels + data, size limit) and run.sh's CPU smoke.

The process boundary is what these test (shell scripts), so they spawn processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from tests.helpers import REAL_PNEUMONIA, REPO

PINS = [ln.strip() for ln in (REPO / "benchmarks" / "gpu" / "wheels.txt").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")]


def _prepare(tmp_path, data_dir):
    env = {**os.environ, "MEDMAE_WHEEL_DIR": str(tmp_path / "whl")}
    return subprocess.run(["bash", "benchmarks/gpu/prepare.sh", str(data_dir)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_prepare_copies_the_data_beside_the_wheels_and_downloads_nothing_present(tmp_path):
    whl = tmp_path / "whl"
    whl.mkdir()
    for pin in PINS:  # already there: nothing is downloaded (no network in tests)
        name, version = pin.split("==")
        (whl / f"{name.replace('-', '_')}-{version}-py3-none-any.whl").write_bytes(b"wheel")
    data = tmp_path / "data"
    data.mkdir()
    np.savez(data / "pneumoniamnist.npz", train_images=np.zeros((2, 28, 28), np.uint8))
    proc = _prepare(tmp_path, data)
    assert proc.returncode == 0, proc.stderr
    assert f"prepared {whl}: {len(PINS)} wheels + pneumoniamnist.npz" in proc.stdout
    assert (whl / "data" / "pneumoniamnist.npz").read_bytes() == (data / "pneumoniamnist.npz").read_bytes()


def test_prepare_names_missing_data_and_an_oversized_folder(tmp_path):
    whl = tmp_path / "whl"
    whl.mkdir()
    for pin in PINS:
        name, version = pin.split("==")
        (whl / f"{name.replace('-', '_')}-{version}-py3-none-any.whl").write_bytes(b"wheel")
    proc = _prepare(tmp_path, tmp_path / "nowhere")
    assert proc.returncode == 1 and "pneumoniamnist.npz not found" in proc.stderr
    data = tmp_path / "data"
    data.mkdir()
    with open(data / "pneumoniamnist.npz", "wb") as f:  # 65 MiB: over what a device call carries
        f.truncate(65 * 2**20)
    proc = _prepare(tmp_path, data)
    assert proc.returncode == 1 and "over the 64 MiB" in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(not REAL_PNEUMONIA.is_file(), reason="needs the real PneumoniaMNIST")
def test_run_sh_cpu_quick_runs_every_step_and_writes_json_and_markdown(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    proc = subprocess.run(["bash", "benchmarks/gpu/run.sh", "--device", "cpu", "--quick", "--out", str(tmp_path),
                           "--data-root", str(REAL_PNEUMONIA.parent)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert proc.returncode == 0, [(s["name"], s["rc"], s["output_tail"][-2000:]) for s in report["steps"]]
    assert [s["rc"] for s in report["steps"]] == [0, 0, 0, 0] and report["quick"] is True
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| throughput (MFU) and data path | ok |" in md and "| epochs reached |" in md
    shutil.rmtree(tmp_path / "mlo_mae_derma_run", ignore_errors=True)
