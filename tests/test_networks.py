import pytest
import timm
import torch

from lightning_modules.components import networks
from lightning_modules.components.cnn import DermaCNN, feature_map_size
from lightning_modules.components.networks import PretrainedWeightsError, timm_network


def test_derma_cnn_matches_study_architecture_at_28px():
    net = DermaCNN(in_chans=3, num_classes=7, img_size=28)
    assert feature_map_size(28) == 4
    assert net.head[1].in_features == 64 * 4 * 4
    assert [m.out_features for m in net.head if isinstance(m, torch.nn.Linear)] == [128, 128, 7]
    convs = [m for m in net.features.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 16, 64, 64]
    assert net(torch.randn(2, 3, 28, 28)).shape == (2, 7)


@pytest.mark.parametrize("size, chans", [(32, 1), (64, 3)])
def test_derma_cnn_other_sizes(size, chans):
    assert DermaCNN(chans, 2, img_size=size)(torch.randn(2, chans, size, size)).shape == (2, 2)


def test_derma_cnn_rejects_too_small_input():
    with pytest.raises(ValueError, match="img_size >= 14"):
        DermaCNN(1, 2, img_size=12)


def test_timm_resnet_with_small_input_stem():
    net = timm_network("resnet18", num_classes=7, in_chans=1, small_input_stem=True)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.in_channels == 1
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 7)


def test_timm_vit_for_small_images():
    net = timm_network("vit_tiny_patch16_224", num_classes=2, in_chans=3, img_size=28, patch_size=4)
    assert net(torch.randn(2, 3, 28, 28)).shape == (2, 2)


def test_unknown_timm_model():
    with pytest.raises(ValueError, match="Unknown timm model 'resnet19'"):
        timm_network("resnet19", 2, 3)


def test_pretrained_without_network_fails_with_clear_message(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(timm, "create_model", offline)
    monkeypatch.setattr(networks, "hub_reachable", lambda repo_id: False)  # tests never touch the network
    with pytest.raises(PretrainedWeightsError, match="unreachable.*pretrained=false"):
        timm_network("resnet18", 2, 3, pretrained=True)


def test_hub_offline_env_is_respected_without_a_request(monkeypatch):
    def no_request(*args, **kwargs):
        raise AssertionError("HF_HUB_OFFLINE is set: nothing may be sent")

    monkeypatch.setattr(networks.hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(networks.huggingface_hub, "model_info", no_request)
    assert networks.hub_reachable("timm/resnet18.a1_in1k") is False


@pytest.mark.slow
def test_pretrained_behind_an_unreachable_proxy_fails_within_seconds(tmp_path):
    """Through huggingface_hub's own client: an HTTPS proxy on a closed local port stands for a
    hospital proxy that refuses the hub. Nothing leaves the machine."""
    import os
    import subprocess
    import sys
    import time

    env = {**os.environ, "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
           "HF_HOME": str(tmp_path / "hf"), "NO_PROXY": ""}
    env.pop("HF_HUB_OFFLINE", None)
    code = ("from lightning_modules.components.networks import timm_network\n"
            "timm_network('resnet18.a1_in1k', 2, 3, pretrained=True)")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - start
    assert proc.returncode != 0 and "PretrainedWeightsError" in proc.stderr
    assert "unreachable or HF_HUB_OFFLINE is set" in proc.stderr and "pretrained_file" in proc.stderr
    assert elapsed < 60, f"took {elapsed:.0f} s"  # imports ~10 s; the hub check itself one request


def test_tagged_names_compose_and_build(tmp_path):
    from hydra.utils import instantiate

    from tests.helpers import compose_cfg

    for name in ("resnet50.a1_in1k", "vit_base_patch16_224.mae", "resnet18.tv_in1k"):
        cfg = compose_cfg(["experiment=quickstart", "model=timm", f"model.net.name={name}"], tmp_path)
        assert cfg.model.net.name == name
    net = instantiate(compose_cfg(["experiment=quickstart", "model=timm", "model.net.name=resnet18.tv_in1k"],
                                  tmp_path).model.net)
    assert net.num_classes == 7
