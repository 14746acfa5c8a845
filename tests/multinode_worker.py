"""One "node" of a 2-node DDP run on this machine (``tests/test_multinode.py``): Lightning reads
MASTER_ADDR, MASTER_PORT, WORLD_SIZE, NODE_RANK and LOCAL_RANK from the environment, as on a
cluster, and the processes talk over gloo. Node 0 saves the final state dict.

    python -m tests.multinode_worker {mlo,classifier} DATA_ROOT OUT.pt
"""

from __future__ import annotations

import sys

import torch
from lightning.pytorch.strategies import DDPStrategy

RUN = {"mlo": (3, 1), "classifier": (1, 3)}  # (batches per epoch, epochs) of each kind


def classifier_setup(data_root: str, batch_size: int):
    """(a tiny ViT classifier trained by plain SGD, a datamodule of 8 training images): with
    one batch per epoch every process sees its share of the same full batch."""
    from functools import partial

    from datamodules import MedMNISTDataModule
    from lightning_modules.classifier import Classifier
    from lightning_modules.components.networks import vit_network

    torch.manual_seed(0)
    net = vit_network(num_classes=2, in_chans=1, img_size=28, patch_size=7, embed_dim=16, depth=1, num_heads=2)
    module = Classifier(net, num_classes=2, task="binary-class", optimizer=partial(torch.optim.SGD), lr=0.5)
    dm = MedMNISTDataModule(flag="pneumoniamnist", root=data_root, download=False, batch_size=batch_size,
                            normalization="half")
    return module, dm


def main(kind: str, data_root: str, out: str) -> None:
    from tests.helpers import fit_state, mlo_setup

    # 2 nodes x 1 process: each process holds half of the single-process batch
    module, dm = mlo_setup(data_root, 4) if kind == "mlo" else classifier_setup(data_root, 4)
    strategy = DDPStrategy(process_group_backend="gloo", find_unused_parameters=True)
    state = fit_state(module, dm, *RUN[kind], devices=1, num_nodes=2, strategy=strategy)
    if module.global_rank == 0:
        torch.save(state, out)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(*sys.argv[1:])
