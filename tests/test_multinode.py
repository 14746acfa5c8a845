"""Multi-node DDP: ``trainer=ddp_multinode``, and 2 "nodes" x 1 process on this machine
(Lightning's cluster environment variables, gloo) giving the single-process run's weights."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from datamodules.synthetic import write_synthetic_medmnist
from tests.helpers import REPO, compose_cfg, fit_state, mlo_setup
from tests.multinode_worker import RUN, classifier_setup


def test_the_multinode_trainer_config():
    cfg = compose_cfg(["experiment=mlo_mae_derma/pretrain", "trainer=ddp_multinode"], Path("/tmp/unused"))
    t = cfg.trainer
    assert (t.num_nodes, t.devices, t.accelerator, t.strategy) == (2, 8, "gpu", "ddp_find_unused_parameters_true")
    launcher = compose_cfg(["trainer=ddp_multinode", "hydra/launcher=slurm_multinode"], Path("/tmp/unused"),
                           ).hydra.launcher
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 8, 8)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.ddp
@pytest.mark.parametrize("kind", ["mlo", "classifier"])
def test_two_nodes_of_one_process_equal_the_single_process_run(kind, data_root, tmp_path):
    root = data_root
    if kind == "classifier":  # 8 training images: one full batch per epoch, shared by the nodes
        root = tmp_path / "tiny"
        write_synthetic_medmnist(root / "pneumoniamnist.npz", num_classes=2, channels=1, proportions=[0.5, 0.5],
                                 n_train=8, n_val=4, n_test=4, seed=5)
    out = tmp_path / "two_nodes.pt"
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2",
           "LOCAL_RANK": "0", "PYTHONPATH": str(REPO)}
    nodes = [subprocess.Popen([sys.executable, "-m", "tests.multinode_worker", kind, str(root), str(out)], cwd=REPO,
                              env={**env, "NODE_RANK": str(rank)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for rank in range(2)]
    logs = [n.communicate(timeout=300)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(log[-2000:] for log in logs)
    two_nodes = torch.load(out, weights_only=True)

    torch.set_num_threads(1)
    setup = mlo_setup if kind == "mlo" else classifier_setup
    single = fit_state(*setup(root, 8), *RUN[kind], devices=1)
    initial = fit_state(*setup(root, 8), 0, devices=1)
    moved = [k for k in single if not torch.equal(single[k], initial[k])]
    assert len(moved) > 5  # the run trained: equal weights are not equal initialisations
    for k in single:
        torch.testing.assert_close(two_nodes[k], single[k], rtol=1e-4, atol=1e-6, msg=k)
