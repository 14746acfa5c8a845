"""core/: atomic writes, the lock file, prediction files and a checkpoint's config."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from core.checkpoints import CheckpointError, run_config
from core.io import atomic_files, atomic_write_text, file_lock
from core.predictions import load_predictions, save_predictions


def test_atomic_files_replace_all_targets_or_none(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "sub" / "b.txt"
    a.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_files(a, b) as (ta, tb):
            ta.write_text("new a")
            raise RuntimeError("boom")
    assert a.read_text() == "old" and not b.exists()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.txt"]  # no temporary file left
    with atomic_files(a, b) as (ta, tb):
        assert ta.suffix == ".txt" and ta.parent == tmp_path  # next to the target, with its suffix
        ta.write_text("new a")
        tb.write_text("new b")
    assert (a.read_text(), b.read_text()) == ("new a", "new b")
    atomic_write_text(a, "text")
    assert a.read_text() == "text"


def test_file_lock_excludes_other_holders(tmp_path):
    lock, inside, overlaps = tmp_path / "x.lock", [], []

    def hold(i: int) -> None:
        with file_lock(lock):
            if inside:
                overlaps.append(i)
            inside.append(i)
            time.sleep(0.05)
            inside.remove(i)

    threads = [threading.Thread(target=hold, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == [] and not lock.exists()


def test_prediction_files_round_trip(tmp_path):
    probs = np.array([[0.2, 0.8], [0.6, 0.4]], np.float32)
    save_predictions(tmp_path, "test", probs, np.array([1, 0]), ["a.png", "b.png"])
    back = load_predictions(tmp_path, "test")
    np.testing.assert_array_equal(back["probs"], probs)
    assert back["ids"].tolist() == ["a.png", "b.png"]
    assert (tmp_path / "test_predictions.csv").read_text().splitlines()[1] == "0,a.png,1,0.200000,0.800000"
    with pytest.raises(FileNotFoundError, match="no val predictions"):
        load_predictions(tmp_path, "val")


def test_run_config_names_a_missing_or_unreadable_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        run_config(tmp_path / "nothing.ckpt")
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read as a checkpoint"):
        run_config(tmp_path / "bad.ckpt")


def test_resolvers_live_with_their_concern_and_register_in_one_call(monkeypatch):
    """core.resolvers: the machine's and session's; datamodules.resolvers: the data's; one call
    registers both (what every entry point makes)."""
    from omegaconf import OmegaConf

    from core import resolvers
    from datamodules.resolvers import DATA_RESOLVERS, register_resolvers

    assert not set(resolvers.RESOLVERS) & set(DATA_RESOLVERS)
    register_resolvers()
    assert all(OmegaConf.has_resolver(name) for name in [*resolvers.RESOLVERS, *DATA_RESOLVERS])
    monkeypatch.setattr(resolvers.os, "cpu_count", lambda: 16)
    cfg = OmegaConf.create({"cpu": "${loader_workers:cpu,1}", "gpu2": "${loader_workers:gpu,2}",
                            "gpu_list": "${loader_workers:cuda,[0,1,2,3]}", "one": "${loader_workers:gpu,1}",
                            "tf32": "${matmul_precision:cuda}", "fp32": "${matmul_precision:auto}",
                            "classes": "${medmnist_num_classes:dermamnist}"})
    assert OmegaConf.to_container(cfg, resolve=True) == {
        "cpu": 0, "gpu2": 7, "gpu_list": 3, "one": 8,  # 16 cores // processes - 1, at most 8
        "tf32": "high", "fp32": "highest", "classes": 7}
