import numpy as np
import pytest
import torch
import torch.nn.functional as F
from medmnist.evaluator import getACC, getAUC
from sklearn.metrics import balanced_accuracy_score, f1_score

from lightning_modules.components.losses import ClassificationLoss, focal_loss
from lightning_modules.metrics import classification_metrics


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
