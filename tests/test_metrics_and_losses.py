import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from medmnist.evaluator import getACC, getAUC
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from lightning_modules.components.losses import ClassificationLoss, focal_loss
from lightning_modules.metrics import classification_metrics

BINARY_KEYS = {"precision", "recall", "specificity", "f1", "auprc"}


def _random_predictions(n, k, seed, never_predict=None):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g) * 2
    if never_predict is not None:
        logits[:, never_predict] -= 100  # a class that is never predicted
    y = torch.randint(0, k, (n,), generator=g)
    y[:k] = torch.arange(k)  # every class present in the targets
    return logits.softmax(-1), y


@pytest.mark.parametrize("k, task", [(7, "multi-class"), (2, "binary-class"), (5, "ordinal-regression")])
def test_metrics_match_medmnist_evaluator_and_sklearn(k, task):
    probs, y = _random_predictions(300, k, seed=k, never_predict=1 if k > 2 else None)
    m = classification_metrics(k, task, "test/")
    m.update(probs, y)
    out = {key: v.item() for key, v in m.compute().items()}
    p, t = probs.numpy().astype(np.float64), y.numpy()
    assert out["test/acc"] == pytest.approx(getACC(t, p, task), abs=1e-6)
    assert out["test/auc"] == pytest.approx(getAUC(t, p, task), abs=1e-5)
    pred = p.argmax(1)
    assert out["test/bal_acc"] == pytest.approx(balanced_accuracy_score(t, pred), abs=1e-6)
    assert out["test/f1_macro"] == pytest.approx(f1_score(t, pred, average="macro"), abs=1e-6)
    assert out["test/f1_weighted"] == pytest.approx(f1_score(t, pred, average="weighted"), abs=1e-6)


def test_multilabel_metrics_match_medmnist_evaluator():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(200, 14, generator=g)
    y = (torch.rand(200, 14, generator=g) < 0.3).long()
    m = classification_metrics(14, "multi-label, binary-class", "val/")
    m.update(probs, y)
    out = m.compute()
    task = "multi-label, binary-class"
    assert out["val/acc"].item() == pytest.approx(getACC(y.numpy(), probs.numpy(), task), abs=1e-6)
    assert out["val/auc"].item() == pytest.approx(getAUC(y.numpy(), probs.numpy(), task), abs=1e-5)


def _binary_predictions(n=500, seed=0):
    """Imbalanced labels (~25 % positive) and a weakly informative, miscalibrated model, so that
    positive-class values differ from the class-0 and macro ones. Probs (N, 2), labels (N,)."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, generator=g) < 0.25).long()
    logit = 1.2 * y + torch.randn(n, generator=g) - 0.4
    probs = torch.stack([torch.zeros(n), logit], 1).softmax(-1)
    probs[:20, 1] = probs[:20, 1].round(decimals=1)  # tied scores for the AUPRC
    probs[:20, 0] = 1 - probs[:20, 1]
    return probs, y


def _sklearn_binary(probs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """The reference values of the positive class (class 1)."""
    pred = (probs[:, 1] > 0.5).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    return {"precision": precision_score(y, pred), "recall": recall_score(y, pred), "specificity": tn / (tn + fp),
            "f1": f1_score(y, pred), "auprc": average_precision_score(y, probs[:, 1]),
            "acc": accuracy_score(y, pred), "auc": roc_auc_score(y, probs[:, 1])}


def test_binary_positive_class_metrics_match_sklearn_over_batches():
    probs, y = _binary_predictions()
    m = classification_metrics(2, "binary-class", "val/")
    for chunk in torch.arange(len(y)).split(128):  # 4 batches, the last one short
        m.update(probs[chunk], y[chunk])
    out = {k.removeprefix("val/"): v.item() for k, v in m.compute().items()}
    p, t = probs.numpy().astype(np.float64), y.numpy()
    ref = _sklearn_binary(p, t)
    for key, value in ref.items():
        assert out[key] == pytest.approx(value, abs=1e-6), key
    assert set(out) == {"acc", "bal_acc", "auc", "auc_defined_labels", "f1_macro", "f1_weighted", *BINARY_KEYS}
    # positive-class values are not the macro / class-0 ones on these predictions
    pred = (p[:, 1] > 0.5).astype(int)
    assert abs(out["f1"] - f1_score(t, pred, average="macro")) > 0.05
    assert abs(out["precision"] - precision_score(t, pred, pos_label=0)) > 0.05
    assert abs(out["recall"] - out["specificity"]) > 0.05
    assert abs(out["auprc"] - average_precision_score(1 - t, p[:, 0])) > 0.05
    assert (p[:, 1] > 0.5).tolist() == (p.argmax(1) == 1).tolist()  # threshold 0.5 == argmax here


def test_binary_metrics_reset_forward_and_compute_groups():
    probs, y = _binary_predictions(seed=1)
    m = classification_metrics(2, "binary-class", "test/")
    m.update(probs[:100], y[:100])
    m.update(probs[100:200], y[100:200])
    groups = [set(g) for g in m.compute_groups.values()]
    for key in BINARY_KEYS - {"auprc"}:  # stateless wrappers: each in its own group, so each is updated
        assert {key} in groups
    assert {"auc", "auprc"} in groups  # both rank the same stored (probabilities, one-hot targets)
    m.compute()
    m.reset()
    batch = m(probs[200:], y[200:])  # forward: the value of this batch, and accumulates it
    ref = _sklearn_binary(probs[200:].double().numpy(), y[200:].numpy())
    for key in BINARY_KEYS:
        assert batch[f"test/{key}"].item() == pytest.approx(ref[key], abs=1e-6), key
        assert m.compute()[f"test/{key}"].item() == pytest.approx(ref[key], abs=1e-6), key
    m.to(torch.device("meta"))
    assert m["test/precision"].wrapped_metric.tp.device.type == "meta"
    with pytest.raises(ValueError, match=r"shape \(B, 2\), got \(4, 3\)"):
        classification_metrics(2, "binary-class", "")["precision"].update(torch.rand(4, 3), torch.ones(4).long())
    with pytest.raises(ValueError, match="needs num_classes=2"):
        classification_metrics(3, "binary-class", "")


@pytest.mark.parametrize("k, task", [(7, "multi-class"), (5, "ordinal-regression"), (2, "multi-class"),
                                     (14, "multi-label, binary-class")])
def test_non_binary_collections_have_no_binary_keys(k, task):
    keys = set(classification_metrics(k, task, "val/").keys())
    base = {"acc", "auc", "auc_defined_labels", "f1_macro", "f1_weighted"} | (
        {"bal_acc"} if "multi-label" not in task else set())
    assert keys == {f"val/{b}" for b in base}


def _ddp_metrics_worker(rank, world, port, out):
    from datetime import timedelta

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    probs, y = _binary_predictions()
    m = classification_metrics(2, "binary-class", "")
    m.update(probs[rank::world], y[rank::world])  # each rank sees half of the data
    values = {k: v.item() for k, v in m.compute().items()}
    torch.save(values, out / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.ddp
def test_binary_metrics_are_synced_across_processes(tmp_path):
    mp.spawn(_ddp_metrics_worker, args=(2, 29541, tmp_path), nprocs=2, join=True)
    probs, y = _binary_predictions()
    ref = _sklearn_binary(probs.double().numpy(), y.numpy())
    for rank in (0, 1):
        values = torch.load(tmp_path / f"rank{rank}.pt")
        for key in (*BINARY_KEYS, "auc"):  # auc / auprc: from the gathered predictions of both ranks
            assert values[key] == pytest.approx(ref[key], abs=1e-6), (rank, key)


def test_focal_with_gamma_zero_equals_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(64, 7, generator=g), torch.randint(0, 7, (64,), generator=g)
    w = torch.rand(7, generator=g) + 0.1
    assert focal_loss(logits, y, gamma=0).item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    assert focal_loss(logits, y, gamma=0, weight=w).item() == pytest.approx(
        F.cross_entropy(logits, y, weight=w).item(), rel=1e-6
    )
    assert focal_loss(logits, y, gamma=0, label_smoothing=0.1).item() == pytest.approx(
        F.cross_entropy(logits, y, label_smoothing=0.1).item(), rel=1e-6
    )


def test_focal_loss_hand_worked_example():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    y = torch.tensor([0, 1])
    p = torch.tensor([np.exp(2) / (np.exp(2) + 1), 0.5])
    expected = ((1 - p) ** 2 * -torch.log(p)).mean()
    assert focal_loss(logits, y, gamma=2).item() == pytest.approx(expected.item(), rel=1e-6)


def test_class_weighted_loss_uses_weights_and_requires_them():
    loss = ClassificationLoss("ce", class_weighted=True)
    logits, y = torch.randn(8, 3), torch.tensor([0, 1, 2, 0, 1, 2, 0, 0])
    with pytest.raises(RuntimeError, match="set_class_weights"):
        loss(logits, y)
    w = torch.tensor([0.5, 2.0, 3.0])
    loss.set_class_weights(w)
    assert loss(logits, y).item() == pytest.approx(F.cross_entropy(logits, y, weight=w).item(), rel=1e-6)


@pytest.mark.parametrize("kwargs, msg", [({"name": "hinge"}, "model.loss.name='hinge'"),
                                          ({"label_smoothing": 1.0}, "label_smoothing=1.0")])
def test_invalid_loss_config(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        ClassificationLoss(**kwargs)


def test_checkpoints_without_tracker_states_still_load_strictly(tmp_path):
    from hydra.utils import instantiate

    from tests.helpers import compose_cfg

    model = instantiate(compose_cfg(["experiment=quickstart"], tmp_path).model, _convert_="all")
    old = {k: v for k, v in model.state_dict().items() if not k.startswith(("val_acc_best.", "val_auc_best."))}
    assert len(old) < len(model.state_dict())  # the trackers are saved now
    checkpoint = {"state_dict": dict(old)}
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"], strict=True)
    del checkpoint["state_dict"]["net.classifier.0.weight" if "net.classifier.0.weight" in old else next(iter(old))]
    with pytest.raises(RuntimeError, match="Missing key"):  # a missing weight is still an error
        model.on_load_checkpoint(checkpoint)
        model.load_state_dict(checkpoint["state_dict"], strict=True)
