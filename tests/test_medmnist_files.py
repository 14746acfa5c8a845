import hashlib
import http.server
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from datamodules import medmnist_files as mf
from datamodules.synthetic import make_synthetic_arrays, write_synthetic_medmnist


@pytest.fixture()
def http_dir(tmp_path):
    """Serve ``tmp_path/served`` on 127.0.0.1; yields (folder, base_url)."""
    served = tmp_path / "served"
    served.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_root_resolution_order(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDMNIST_ROOT", str(tmp_path / "env"))
    assert mf.resolve_root(tmp_path / "explicit") == (tmp_path / "explicit").resolve()
    assert mf.resolve_root(None) == (tmp_path / "env").resolve()
    monkeypatch.delenv("MEDMNIST_ROOT")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert mf.resolve_root(None) == (tmp_path / "home" / ".medmnist").resolve()


def test_file_names_and_sizes():
    assert mf.file_name("dermamnist", 28) == "dermamnist.npz"
    assert mf.file_name("dermamnist", 224) == "dermamnist_224.npz"
    with pytest.raises(ValueError, match=r"data.size=30 is invalid; allowed sizes are \[28, 64, 128, 224\]"):
        mf.file_name("dermamnist", 30)


def test_unknown_flag_lists_valid_flags():
    with pytest.raises(ValueError, match="Unknown MedMNIST flag 'dermamnst'.*dermamnist.*pneumoniamnist"):
        mf.medmnist_info("dermamnst")


def test_download_success_verifies_md5_and_renames(http_dir, tmp_path):
    served, base = http_dir
    src = write_synthetic_medmnist(served / "x.npz", n_train=50, n_val=10, n_test=10)
    dest = tmp_path / "root" / "dermamnist.npz"
    mf.download_file(f"{base}/x.npz", dest, _md5(src))
    assert dest.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["dermamnist.npz"]  # no temp left


def test_download_md5_mismatch_leaves_nothing(http_dir, tmp_path):
    served, base = http_dir
    write_synthetic_medmnist(served / "x.npz", n_train=50, n_val=10, n_test=10)
    dest = tmp_path / "root" / "dermamnist.npz"
    with pytest.raises(mf.DatasetError, match="MD5 mismatch"):
        mf.download_file(f"{base}/x.npz", dest, "0" * 32)
    assert not dest.parent.exists()  # neither the temporary file nor the folder it made is left


def test_ensure_file_reports_url_path_and_env_var_when_download_fails(http_dir, tmp_path, monkeypatch):
    _, base = http_dir
    url = f"{base}/missing.npz"  # 404 from the local server
    monkeypatch.setattr(mf, "url_and_md5", lambda flag, size: (url, "0" * 32))
    with pytest.raises(mf.DatasetError) as info:
        mf.ensure_file("dermamnist", 28, tmp_path / "root", download=True)
    msg = str(info.value)
    assert url in msg and str(tmp_path / "root" / "dermamnist.npz") in msg and "MEDMNIST_ROOT" in msg
    assert not (tmp_path / "root").exists()


def test_ensure_file_without_download_names_real_zenodo_url(tmp_path):
    with pytest.raises(mf.DatasetError) as info:
        mf.ensure_file("dermamnist", 64, tmp_path, download=False)
    msg = str(info.value)
    assert "zenodo.org" in msg and "dermamnist_64.npz" in msg and "MEDMNIST_ROOT" in msg


# ---------- content validation -----------------------------------------------------------

def _write(path, **changes):
    arrays = make_synthetic_arrays(n_train=70, n_val=14, n_test=14)
    arrays.update(changes)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


def test_valid_file_loads(tmp_path):
    arrays = mf.load_arrays(_write(tmp_path / "d.npz"), 7, "multi-class", size=28)
    assert arrays.images["train"].shape == (70, 28, 28, 3)
    assert arrays.labels["test"].dtype == np.int64


@pytest.mark.parametrize(
    "changes, problem",
    [
        ({"val_labels": None}, r"missing keys \['val_labels'\]"),
        ({"train_images": np.zeros((70, 28, 28, 3), np.float32)}, "dtype float32, expected uint8"),
        ({"test_labels": np.full((14, 1), 9, np.uint8)}, r"outside \[0, 6\]"),
        ({"train_labels": np.zeros((70, 1), np.uint8)}, r"classes \[1, 2, 3, 4, 5, 6\] have no training image"),
        ({"val_labels": np.zeros((13, 1), np.uint8)}, r"val_labels has shape \(13, 1\), expected \(14, K\)"),
        ({"test_images": np.zeros((14, 32, 32, 3), np.uint8)}, "expected square 28 px"),
    ],
)
def test_invalid_content_gives_one_clear_error(tmp_path, changes, problem):
    path = _write(tmp_path / "bad.npz", **changes)
    with pytest.raises(mf.DatasetError, match=problem) as info:
        mf.load_arrays(path, 7, "multi-class", size=28)
    assert str(path) in str(info.value)


def test_truncated_file_is_reported_and_kept(tmp_path):
    good = write_synthetic_medmnist(tmp_path / "good.npz", n_train=70, n_val=14, n_test=14)
    bad = tmp_path / "dermamnist.npz"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(mf.DatasetError, match="truncated or corrupt") as info:
        mf.load_arrays(bad, 7, "multi-class")
    assert str(bad) in str(info.value)
    assert bad.exists()  # the user's file is never deleted


def test_not_an_npz_is_reported(tmp_path):
    bad = tmp_path / "dermamnist.npz"
    bad.write_text("<html>Zenodo is down</html>")
    with pytest.raises(mf.DatasetError, match="not a readable .npz"):
        mf.load_arrays(bad, 7, "multi-class")
