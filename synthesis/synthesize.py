"""Sample a trained class-conditioned diffusion model into a synthetic training set:
``python synthesize.py DIFFUSION_CKPT --out synthetic.npz [--target balance | --counts 0=500,3=200]``.

DDIM with a configurable number of steps and guidance scale, batched, on the GPU when there
is one. The output is a MedMNIST-style ``.npz`` with ``train_images`` / ``train_labels`` only
(validation and test stay real) and a JSON card (``datamodules/generated_set.py``): the
checkpoint, seed, steps, guidance and counts. Both files are written to temporary names and
only then renamed into place, so a failed or killed run never leaves a half-written set.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from rich.progress import Progress

from core.checkpoints import CheckpointError, run_config
from core.io import atomic_files
from datamodules.generated_set import CARD_FORMAT, card_path
from datamodules.resolvers import register_resolvers
from lightning_modules.diffusion import DATA_KEY

register_resolvers()  # configs of runs may hold ${...} resolvers

TARGETS = ("balance", "counts")
log = logging.getLogger(__name__)
FAST_DEV_RUN_STEPS = 2  # DDIM steps per image when the stage runs under trainer.fast_dev_run (debug=fdr)


def load_diffusion(ckpt: Path, device: str = "cpu"):
    """The ``ClassConditionedDiffusion`` of ``ckpt`` (weights incl. EMA) and the data identity
    its checkpoint recorded (source, classes, size, channels, training counts)."""
    cfg = run_config(ckpt)
    if not str(cfg.model.get("_target_", "")).endswith("ClassConditionedDiffusion"):
        raise CheckpointError(f"{ckpt} is not a diffusion checkpoint ({cfg.model.get('_target_')})")
    cfg.model.perceptual_weight, cfg.model.perceptual_net = 0.0, None  # sampling needs no perceptual net
    model = instantiate(cfg.model, _convert_="all")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    model.load_state_dict(state["state_dict"])
    if DATA_KEY not in state:
        raise CheckpointError(f"{ckpt} records no training data ({DATA_KEY}); was it saved by train.py?")
    return model.to(device).eval(), state[DATA_KEY]


def target_counts(train_counts: list[int], target: str = "balance", counts: dict[int, int] | None = None) -> list[int]:
    """Images to generate per class: ``balance`` tops every class up to the majority count;
    ``counts`` takes ``{class: n}`` (absent classes 0)."""
    k = len(train_counts)
    if target == "balance":
        top = max(train_counts)
        return [top - c for c in train_counts]
    if target == "counts":
        counts = counts or {}
        bad = {c: n for c, n in counts.items() if not 0 <= int(c) < k or int(n) < 0}
        if bad:
            raise ValueError(f"--counts {bad} is invalid: classes are 0..{k - 1}, counts >= 0")
        return [int(counts.get(c, 0)) for c in range(k)]
    raise ValueError(f"--target={target!r} is invalid; allowed: {list(TARGETS)}")


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> uint8 (B, H, W) for 1 channel, (B, H, W, 3) for 3 (MedMNIST layout)."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    return x[:, 0].numpy() if x.shape[1] == 1 else x.permute(0, 2, 3, 1).numpy()


def atomic_write(files: dict[Path, Callable[[Path], None]]) -> None:
    """Call each writer with a temporary path next to its file, then rename them all into place;
    on any error no target file is created or changed (``core.io.atomic_files``)."""
    with atomic_files(*files) as temps:
        for write, tmp in zip(files.values(), temps):
            write(tmp)


def generate(model, counts: list[int], steps: int, guidance: float, seed: int, batch_size: int,
             progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``counts[c]`` images of every class c, in class order. Batch b of class c uses noise
    from seed (seed, c, b), so a class's images do not depend on the other classes' counts."""
    device = next(model.parameters()).device
    from lightning_modules.components.hypergradient import no_tf32

    images, labels = [], []
    total = sum(counts)
    with Progress(disable=not progress) as bar, no_tf32():  # the same images from a stage or the CLI
        task = bar.add_task(f"DDIM {steps} steps, guidance {guidance}", total=total)
        for c, n in enumerate(counts):
            for b, start in enumerate(range(0, n, batch_size)):
                m = min(batch_size, n - start)
                g = torch.Generator(device=device).manual_seed(int(np.random.SeedSequence([seed, c, b]).generate_state(1)[0]))
                y = torch.full((m,), c, dtype=torch.long, device=device)
                images.append(to_uint8(model.sample(y, steps=steps, guidance=guidance, generator=g)))
                labels.append(np.full((m, 1), c, dtype=np.int64))
                bar.advance(task, m)
    if not images:
        raise ValueError("nothing to generate: every class count is 0")
    return np.concatenate(images), np.concatenate(labels)


def check_against(data: dict, hp, expected: dict, ckpt: Path) -> None:
    """The diffusion model must have been trained on ``expected``'s dataset, classes, size and
    channels (``datamodules.generated_set.IDENTITY_KEYS``)."""
    made = {"data_source": data["data_source"], "num_classes": int(hp.num_classes),
            "image_size": int(hp.img_size), "channels": int(hp.in_chans),
            "train_fingerprint": data.get("train_fingerprint")}
    differ = {k: (made[k], expected[k]) for k in made if k in expected and made[k] != expected[k]}
    if differ:
        detail = ", ".join(f"{k} {m!r} vs {e!r}" for k, (m, e) in differ.items())
        raise ValueError(f"the diffusion checkpoint {ckpt} does not fit the data ({detail}: the checkpoint's vs "
                         "the data's); train the diffusion stage on this dataset at its image size")


def synthesize(ckpt: Path, out: Path, target: str = "balance", counts: dict[int, int] | None = None,
               steps: int = 50, guidance: float = 2.0, seed: int = 0, batch_size: int = 256,
               device: str = "auto", progress: bool = True, expected: dict | None = None) -> dict:
    """Sample and write ``out`` (.npz) and its card (.json); returns the card. ``expected``
    (a datamodule's ``data_identity``) makes a mismatched checkpoint an error before sampling."""
    out = Path(out)
    if out.suffix != ".npz":
        raise ValueError(f"--out={out} must end in .npz")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, data = load_diffusion(Path(ckpt), device)
    if expected is not None:
        check_against(data, model.hparams, expected, Path(ckpt))
    per_class = target_counts(data["train_counts"], target, counts)
    images, labels = generate(model, per_class, steps, guidance, seed, batch_size, progress)
    hp = model.hparams
    card = {
        "format": CARD_FORMAT,
        "data_source": data["data_source"], "num_classes": data["num_classes"], "class_names": data["class_names"],
        "image_size": int(hp.img_size), "channels": int(hp.in_chans),
        "train_fingerprint": data.get("train_fingerprint"),
        "checkpoint": str(Path(ckpt).resolve()), "seed": seed, "steps": steps, "guidance_scale": guidance,
        "sampler": "DDIM (eta 0), EMA weights", "target": target,
        "real_train_counts": {str(c): int(n) for c, n in enumerate(data["train_counts"])},
        "counts": {str(c): int(n) for c, n in enumerate(per_class)},
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    payload = npz_bytes(train_images=images, train_labels=labels)
    card["sha256"] = hashlib.sha256(payload).hexdigest()
    atomic_write({out: lambda p: write_bytes(p, payload),
                  card_path(out): lambda p: p.write_text(json.dumps(card, indent=2))})
    return card


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def write_bytes(path: Path, payload: bytes) -> None:
    path.write_bytes(payload)


def parse_counts(text: str) -> dict[int, int]:
    """``"0=500,3=200"`` -> {0: 500, 3: 200}."""
    try:
        return {int(k): int(v) for k, v in (item.split("=") for item in text.split(",") if item)}
    except ValueError:
        raise ValueError(f"--counts={text!r} is invalid; write class=count pairs, e.g. 0=500,3=200") from None


def real_training_arrays(dm) -> tuple[np.ndarray, np.ndarray]:
    """A set-up datamodule's real training images in MedMNIST layout (uint8 (N, H, W) or
    (N, H, W, 3)) and labels (N, 1)."""
    images = dm.train_set.images  # (N, C, H, W) uint8
    arr = images[:, 0].numpy() if images.shape[1] == 1 else images.permute(0, 2, 3, 1).numpy()
    return arr, np.asarray(dm.train_labels).reshape(-1, 1)


def run_synthesis_stage(cfg) -> dict:
    """Pipeline stage: ``cfg.synthesis`` {ckpt, target, counts, steps, guidance, seed, batch_size,
    classifier_ckpt, inception_weights} -> ``<paths.output_dir>/synthetic.npz`` (checked against
    the stage's data) and the quality report (report.md); returns {"synthetic_train": path, ...}.
    Under ``trainer.fast_dev_run`` (``debug=fdr``) it samples with ``FAST_DEV_RUN_STEPS`` steps,
    as Lightning runs one batch: the stage is exercised, its images mean nothing."""
    from synthesis.quality import quality_report

    s, out_dir = cfg.synthesis, Path(cfg.paths.output_dir)
    steps = s.get("steps", 50)
    if (cfg.get("trainer") or {}).get("fast_dev_run"):  # debug=fdr: the stage runs, not for its images
        steps = FAST_DEV_RUN_STEPS
        log.info("trainer.fast_dev_run: %d DDIM steps per image instead of %s", steps, s.get("steps", 50))
    if cfg.data.get("synthetic_train"):
        raise ValueError("the synthesis stage's data must be the real data alone: unset data.synthetic_train")
    dm = instantiate(cfg.data, _convert_="all")
    dm.prepare_data()
    dm.setup("fit")
    real_images, real_labels = real_training_arrays(dm)
    out = out_dir / "synthetic.npz"
    counts = {int(k): int(v) for k, v in (s.get("counts") or {}).items()}
    card = synthesize(Path(s.ckpt), out, s.get("target", "balance"), counts, steps,
                      s.get("guidance", 2.0), s.get("seed", cfg.seed), s.get("batch_size", 256),
                      expected=dm.real_train_identity)
    classifier = s.get("classifier_ckpt")
    inception = s.get("inception_weights")
    figures = quality_report(out, real_images, real_labels, list(dm.class_names), out_dir,
                             classifier_ckpt=Path(classifier) if classifier else None,
                             inception_weights=Path(inception) if inception else None, seed=cfg.seed)
    scalars = {f"quality/{k}": v for k, v in figures.items() if isinstance(v, (int, float))}
    return {"synthetic_train": str(out), **{f"synthetic/count_{c}": n for c, n in card["counts"].items()}, **scalars}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt", type=Path, help="diffusion checkpoint (train.py model=diffusion)")
    parser.add_argument("--out", type=Path, required=True, help="output .npz (the card is written next to it)")
    parser.add_argument("--target", choices=TARGETS, default="balance")
    parser.add_argument("--counts", default="", help="with --target counts: class=count pairs, e.g. 0=500,3=200")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance scale (1 = none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    args = parser.parse_args(argv)
    try:
        counts = parse_counts(args.counts) if args.target == "counts" else None
        card = synthesize(args.ckpt, args.out, args.target, counts, args.steps, args.guidance, args.seed,
                          args.batch_size, args.device)
    except (ValueError, FileNotFoundError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} and {card_path(args.out)}: {sum(card['counts'].values())} images, per class "
          f"{card['counts']}")
    return 0
