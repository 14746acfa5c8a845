"""Every file we read fails well: a truncated, corrupt or vanished checkpoint, image, table,
DICOM file, sweep storage, cache or stage marker gives one message naming it and the fix, with
no traceback (library loggers included), from the main process or a DataLoader worker alike."""

from __future__ import annotations

import csv
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from core.checkpoints import CheckpointError
from core.errors import one_message
from datamodules import DatasetError, ImageTableDataModule
from datamodules.export import export_npz
from datamodules.synthetic import write_synthetic_medmnist
from pipeline.cli import train, train_main
from tests.helpers import compose_cfg, tiny_overrides

FIX = "copy or download it again, or use another checkpoint of the run"


def _no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text and 'File "' not in text


def _truncated(path: Path, to: Path) -> Path:
    data = path.read_bytes()
    to.write_bytes(data[: len(data) // 2])
    return to


def _train_cli(monkeypatch, args: list[str]) -> int:
    """``train.py ARGS`` in this process (Hydra reads sys.argv); its exit status."""
    monkeypatch.setattr(sys, "argv", ["train.py", "print_config=false", *args])
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        with pytest.raises(SystemExit) as stop:
            train_main()
    finally:  # Hydra's job logging adds handlers on this test's captured streams: give the old ones back
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(level)
    return stop.value.code


@pytest.fixture(scope="module")
def ckpt(data_root, tmp_path_factory) -> Path:
    """A quickstart fast_dev_run checkpoint."""
    run = tmp_path_factory.mktemp("run")
    return Path(train(compose_cfg(["experiment=quickstart", *tiny_overrides(data_root), "debug=fdr"], run))["best_checkpoint"])


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("table")
    npz = write_synthetic_medmnist(root / "s.npz", num_classes=2, channels=1, n_train=40, n_val=12, n_test=12, seed=5)
    return export_npz(npz, root / "png", class_names=["normal", "pneumonia"])


# ----- checkpoints ---------------------------------------------------------------------------
def test_resuming_from_a_truncated_checkpoint_is_one_message(ckpt, data_root, tmp_path, monkeypatch, capsys):
    bad = _truncated(ckpt, tmp_path / "last.ckpt")
    code = _train_cli(monkeypatch, ["experiment=quickstart", *tiny_overrides(data_root), f"ckpt_path={bad}",
                                    f"hydra.run.dir={tmp_path / 'run'}"])
    out, err = capsys.readouterr()
    assert code == 1
    assert f"error: ckpt_path={bad} cannot be read as a checkpoint (truncated, or not a PyTorch checkpoint" in err
    assert FIX in err and "start afresh without ckpt_path" in err
    _no_traceback(out, err)


@pytest.mark.parametrize("command", ["evaluate", "export", "predict"])
def test_evaluate_export_and_predict_name_a_truncated_checkpoint(command, ckpt, tmp_path, capsys):
    from deploy import export, predict
    from evaluation import evaluate

    bad = _truncated(ckpt, tmp_path / "model.ckpt")
    main = {"evaluate": evaluate.main, "export": export.main, "predict": predict.main}[command]
    args = [str(bad)] + ([str(tmp_path)] if command == "predict" else [])
    assert main(args) in (1, 2)
    out, err = capsys.readouterr()
    assert err.startswith(f"error: {bad} cannot be read as a checkpoint (RuntimeError: PytorchStreamReader") and FIX in err
    assert len(err.strip().splitlines()) == 1
    _no_traceback(out, err)
    assert not (tmp_path / "export").exists()  # nothing half-written


def test_a_typo_in_init_from_names_the_allowed_values(tmp_path, ckpt, monkeypatch, capsys):
    from omegaconf import OmegaConf

    from pipeline.stages import init_stage

    with pytest.raises(ValueError, match=r"stages.finetune.init_from.ckpt='bets' is invalid; allowed: best, last \(the "
                                         r"checkpoints of stages.finetune.init_from.stage='pretrain'\) or, with "
                                         r".*stage=null, an existing checkpoint file \(did you mean 'best'\?\)"):
        init_stage("finetune", OmegaConf.create({"stage": "pretrain", "ckpt": "bets"}))
    with pytest.raises(FileNotFoundError, match=r"ckpt=lst: no such checkpoint file; allowed: best, last \(with "
                                                r"stages.finetune.init_from.stage\) .*\(did you mean 'last'\?\)"):
        init_stage("finetune", OmegaConf.create({"stage": None, "ckpt": "lst"}))
    with pytest.raises(ValueError, match=r"init_from.ckpt=best needs stages.finetune.init_from.stage=<the stage"):
        init_stage("finetune", OmegaConf.create({"stage": None, "ckpt": "best"}))
    bad = _truncated(ckpt, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match=r"stages.finetune.init_from.ckpt=.*bad.ckpt cannot be read as a checkpoint"):
        init_stage("finetune", OmegaConf.create({"stage": None, "ckpt": str(bad)}))

    # from the command line: before any stage trains, one line
    code = _train_cli(monkeypatch, ["experiment=mae_small", "stages.finetune.init_from.ckpt=bets",
                                    f"hydra.run.dir={tmp_path / 'run'}"])
    out, err = capsys.readouterr()
    assert code == 1 and "init_from.ckpt='bets' is invalid; allowed: best, last" in err and "did you mean 'best'" in err
    _no_traceback(out, err)
    assert not (tmp_path / "run" / "pretrain" / "checkpoints").exists()


# ----- images, tables, DICOM -----------------------------------------------------------------
def test_a_table_reports_every_problem_at_once(tmp_path):
    images = tmp_path / "img"
    images.mkdir()
    rows = []
    for i in range(9):
        Image.fromarray(np.full((8, 8), 20 * i, np.uint8)).save(images / f"{i}.png")
        rows.append({"path": f"{i}.png", "label": "ab"[i % 2], "split": ["train", "val", "test"][i % 3]})
    rows[5]["path"] = "0.png"  # a duplicated row
    (images / "7.png").unlink()  # a missing file
    rows[8]["label"] = "c"  # a label outside data.classes
    pd.DataFrame(rows).to_csv(tmp_path / "table.csv", index=False)
    with pytest.raises(DatasetError) as err:
        ImageTableDataModule(table=str(tmp_path / "table.csv"), image_root=str(images), classes=["a", "b"],
                             split_column="split", channels=1, img_size=8, cache_dir=None).prepare_data()
    text = str(err.value)
    assert text.startswith("3 problems:")
    assert "line 7: 0.png (also line 2: 0.png)" in text  # the duplicate
    assert f"name image files that do not exist under {images}" in text and "line 9: 7.png" in text
    assert "label outside data.classes=['a', 'b']" in text and "line 10: 8.png" in text


def test_a_file_that_vanishes_during_lazy_training_is_one_message_from_a_worker(table, tmp_path, monkeypatch, capsys):
    data = tmp_path / "png"
    shutil.copytree(table.parent, data)
    with open(data / "table.csv", newline="") as f:
        gone = data / next(r["path"] for r in csv.DictReader(f) if r["split"] == "train")
    code = _train_cli(monkeypatch, [
        "experiment=cnn_derma", "data=image_table", f"data.table={data / 'table.csv'}", "data.split_column=split",
        "data.channels=1", "data.img_size=28", "data.decode=lazy", "data.num_workers=1", "trainer=cpu", "logger=csv",
        "~callbacks.rich_progress_bar", "trainer.max_epochs=1", "data.cache_dir=null",
        "+callbacks.gone._target_=tests.helpers.DeleteAtTrainStart", f"+callbacks.gone.path={gone}",
        f"hydra.run.dir={tmp_path / 'run'}"])
    out, err = capsys.readouterr()
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: {gone} cannot be decoded (FileNotFoundError") and "replace or remove it" in last
    assert "DataLoader worker" not in err
    _no_traceback(out, err)


def test_a_worker_error_is_unwrapped_to_its_message():
    class Broken(Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i):
            raise DatasetError("x.png cannot be decoded (OSError: truncated); replace or remove it")

    with pytest.raises(DatasetError) as err:
        list(DataLoader(Broken(), num_workers=1))
    assert str(err.value).startswith("Caught DatasetError in DataLoader worker process 0")  # what torch gives
    assert one_message(err.value, (DatasetError,)) == "x.png cannot be decoded (OSError: truncated); replace or remove it"


def _undecodable_dicom(path: Path) -> Path:
    """A DICOM whose JPEG pixel data is not JPEG (no plugin can decode it)."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset as DicomDataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds = DicomDataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = encapsulate([b"\xff\xd8 not a jpeg \xff\xd9"])
    ds["PixelData"].VR = "OB"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def test_predict_classifies_what_it_can_and_lists_what_it_could_not(ckpt, data_root, tmp_path, capsys, caplog):
    from deploy import predict

    folder = tmp_path / "incoming"
    folder.mkdir()
    with np.load(data_root / "dermamnist.npz") as npz:
        for i in range(3):
            Image.fromarray(npz["test_images"][i]).save(folder / f"good_{i}.png")
    _truncated(folder / "good_0.png", folder / "truncated.png")
    (folder / "notes.png").write_text("not an image")
    _undecodable_dicom(folder / "scan.dcm")
    out_csv = tmp_path / "p.csv"
    caplog.set_level(logging.DEBUG)
    assert predict.main([str(ckpt), str(folder), str(tmp_path / "nowhere.png"), "--out", str(out_csv)]) == 0
    out, err = capsys.readouterr()
    with open(out_csv, newline="") as f:
        assert [Path(r["path"]).name for r in csv.DictReader(f)] == ["good_0.png", "good_1.png", "good_2.png"]
    with open(tmp_path / "p.unreadable.csv", newline="") as f:
        failed = {Path(r["path"]).name: r["reason"] for r in csv.DictReader(f)}
    assert set(failed) == {"truncated.png", "notes.png", "scan.dcm", "nowhere.png"}
    assert "replace or remove the file" in failed["scan.dcm"] and "pylibjpeg" in failed["scan.dcm"]
    assert failed["nowhere.png"] == "no such file or folder"
    assert "4 input(s) could not be read" in err and "scan.dcm" in err and "wrote " in out
    _no_traceback(out, err, caplog.text)
    assert not [r for r in caplog.records if r.name.startswith("pydicom") and r.exc_info]

    assert predict.main([str(ckpt), str(folder), "--out", str(out_csv), "--strict"]) == 1  # asked to be strict
    only_bad = tmp_path / "bad_only"
    only_bad.mkdir()
    shutil.copy(folder / "notes.png", only_bad)
    capsys.readouterr()
    assert predict.main([str(ckpt), str(only_bad), "--out", str(tmp_path / "none.csv")]) == 1  # nothing read
    assert "error: no image could be read" in capsys.readouterr().err and not (tmp_path / "none.csv").exists()


# ----- sweep storage, caches, stage markers ----------------------------------------------------
@pytest.mark.parametrize(("storage", "name"), [("sqlite", "optuna.db"), ("journal", "optuna.journal")])
def test_a_damaged_sweep_storage_is_one_message(storage, name, data_root, tmp_path, capsys, caplog):
    from pipeline import sweep

    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / name).write_bytes(b"\x00garbage\n" * 64)
    args = ["experiment=quickstart", *tiny_overrides(data_root), f"sweep.dir={tmp_path / 'sweep'}",
            f"sweep.storage={storage}"]
    assert sweep.main(args) == 1
    out, err = capsys.readouterr()
    assert err.startswith(f"error: {tmp_path / 'sweep' / name} cannot be read as an Optuna study storage")
    assert "move it away to start a new study" in err
    _no_traceback(out, err, caplog.text)


def test_a_damaged_image_cache_is_named_and_rebuilt(table, tmp_path, caplog):
    def images():
        dm = ImageTableDataModule(table=str(table), split_column="split", channels=1, img_size=28,
                                  cache_dir=str(tmp_path / "cache"))
        dm.prepare_data()
        dm.setup()
        return dm.train_set.images.clone()

    first = images()
    (cache,) = (tmp_path / "cache").glob("images-*.npy")
    _truncated(cache, cache)
    with caplog.at_level(logging.WARNING):
        again = images()
    assert f"the image cache {cache} cannot be read" in caplog.text and "decoding the images again" in caplog.text
    assert torch.equal(first, again)


def test_a_damaged_stage_marker_names_the_file_and_the_fix(tmp_path):
    from pipeline.stages import read_marker

    marker = tmp_path / "stage.json"
    marker.write_text('{"best_checkpoint": "/runs/a.ck')  # cut off
    with pytest.raises(ValueError, match=r"stage.json cannot be read \(JSONDecodeError.*delete it to run stage "
                                         r"'pretrain' again \(it resumes from its checkpoints/last.ckpt\)"):
        read_marker(marker, "pretrain")


def test_a_damaged_hash_cache_is_named_and_rewritten(tmp_path, monkeypatch, caplog):
    import hashlib
    import json

    from core import file_hash

    monkeypatch.setenv("MEDMAE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(file_hash, "PERSIST_MIN_BYTES", 1)  # every file's hash goes to the disk cache
    monkeypatch.setattr(file_hash, "_memory", {})
    data = tmp_path / "data.npz"
    data.write_bytes(b"medmnist" * 1000)
    (tmp_path / "cache").mkdir()
    store = tmp_path / "cache" / "file_sha256.json"
    store.write_text('["not", "a mapping"')  # cut off mid-write by some other tool
    with caplog.at_level(logging.WARNING):
        assert file_hash.file_sha256(data) == hashlib.sha256(data.read_bytes()).hexdigest()
    assert f"the hash cache {store} is damaged" in caplog.text
    assert list(json.loads(store.read_text()).values()) == [hashlib.sha256(data.read_bytes()).hexdigest()]
