"""Export a trained classifier to ONNX or TorchScript, check it against PyTorch and time it.

    python export.py logs/quickstart/runs/<time>/checkpoints/epoch_004.ckpt
    python export.py CKPT --format torchscript --out deployed/
    python export.py STUDENT_CKPT --compare TEACHER_CKPT --latency-runs 200
    python export.py CKPT --quantize int8        # also model.int8.onnx and its test accuracy vs fp32

The network (``model.net``, eval mode, CPU, fp32) is exported with a dynamic batch axis
(input ``images`` (B, C, H, W) float32, output ``logits`` (B, K)); with
``--preprocess-in-graph`` the input is uint8 pixels (B, H, W, C) and the scaling, channel
repeat and mean / std normalisation are in the graph (``deploy.graph``; outputs ``logits`` and
``probabilities``). Everything comes from the checkpoint alone (its stored preprocessing record
and tuned decision rule). Before the file is moved into place, the first ``--parity-images``
test images of the run (seeded random uint8 images when its data cannot be read) go through
PyTorch and through the exported model (ONNX Runtime on CPU, or the loaded TorchScript
module); a max abs logit difference above ``--tolerance`` is an error and leaves no model
file. The file carries plain metadata keys (``deploy.metadata``: class names, input layout,
model version, description, thresholds tuned on validation) and a MONAI-bundle-style
``metadata.json`` is written beside it; ``--wandb`` logs it as a W&B model artifact. Then batch-1 CPU latency is measured (median of ``--latency-runs``
timed calls after warm-up, one thread) for the exported model and PyTorch eager;
``--compare CKPT`` measures a second checkpoint (e.g. the teacher) the same way in a
temporary folder. Writes ``export.json`` and ``export.md`` next to the model (default:
``<run dir>/export/model.onnx`` or ``model.pt``); both name the data the model was trained on
(the checkpoint's data identity: file and sha256, table and fingerprint, or "synthetic, not
real data").
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.transforms import v2

from core.checkpoints import (
    CheckpointError,
    load_classifier,
    resolve_checkpoint,
    run_config,
    stored_identity,
)
from core.data_identity import describe
from core.io import atomic_path, atomic_write_text
from core.tracking import artifact_job, log_model_files, wandb_job
from datamodules.medmnist_files import DatasetError
from deploy.graph import Preprocess, RawInputModel, raw_record
from deploy.metadata import About, bundle_metadata, plain_metadata
from deploy.preprocessing import METADATA_KEY, check_record, dumps, preprocessing_of
from deploy.quantize import (
    CALIBRATION_IMAGES,
    accuracy,
    calibration_inputs,
    quantize_int8,
    test_inputs,
)
from evaluation.evaluate import checkpoint_data

FORMATS = {"onnx": "model.onnx", "torchscript": "model.pt"}
THREADS = 1  # intra-op threads for every latency measurement (PyTorch and ONNX Runtime)
WARMUP = 10  # untimed calls first (TorchScript's profiling executor optimises on the first runs)
FAST_DEV_RUN_LATENCY_RUNS = 5  # timed calls of a pipeline's export stage under trainer.fast_dev_run (debug=fdr)
PARITY_BATCH = 64
EXAMPLE_BATCH = 2  # tracing / torch.export example; a batch of 1 would specialise the batch axis

Runtime = Callable[[torch.Tensor], np.ndarray]
RAW_OUTPUTS = ["logits", "probabilities"]
DEFAULT_ABOUT = About()
log = logging.getLogger(__name__)


class ParityError(RuntimeError):
    """The exported model's logits differ from PyTorch's by more than the tolerance."""


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r} is invalid; allowed: {', '.join(FORMATS)}")
    return fmt


def model_path(ckpt: Path, fmt: str, out: Path | None) -> Path:
    """The model file: ``out`` itself, ``out/model.<ext>`` when ``out`` is a folder (exists or
    has no suffix), else ``<run dir>/export/model.<ext>`` for a checkpoint in its run's
    ``checkpoints/`` folder, or ``export/model.<ext>`` beside a checkpoint kept elsewhere."""
    if out is None:
        folder = ckpt.resolve().parent
        return (folder.parent if folder.name == "checkpoints" else folder) / "export" / FORMATS[fmt]
    out = Path(out)
    return out / FORMATS[fmt] if out.is_dir() or not out.suffix else out


def checkpoint_network(ckpt: Path) -> tuple[nn.Module, dict]:
    """``model.net`` of a classifier checkpoint (eval, CPU, fp32, contiguous) and its
    preprocessing record (``datamodules.input_record``) with the decision rule tuned on validation
    under ``output.decision`` when the run tuned one: both from the checkpoint alone. A checkpoint
    saved before runs stored the record rebuilds the record from its run's data."""
    if not Path(ckpt).is_file():
        raise FileNotFoundError(f"{ckpt}: no such checkpoint file")
    stored = stored_identity(ckpt) or {}
    num_classes = run_config(ckpt).model.get("num_classes")
    model = load_classifier(ckpt, num_classes)  # first: a non-classifier fails before data loading
    record = stored.get("preprocessing")
    if record is None:  # saved before checkpoints carried their record: the run's data gives it
        datamodule, _ = checkpoint_data(ckpt, "test")
        record = preprocessing_of(datamodule)
    record = check_record(record, str(ckpt))
    if len(record["output"]["class_names"]) != num_classes:
        raise CheckpointError(f"{ckpt} predicts {num_classes} classes but its record names "
                              f"{len(record['output']['class_names'])}")
    if stored.get("decision"):
        record = {**record, "output": {**record["output"], "decision": stored["decision"]}}
    return model.net.float().cpu().eval().to(memory_format=torch.contiguous_format), record


def _at_size(image: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """One uint8 image (C, H, W) as (size, size, channels) uint8: its first ``channels`` channels (a
    grayscale set repeated to RGB by ``as_rgb`` has equal ones), resized (bilinear, antialiased) and rounded."""
    x = image[:channels]
    if x.shape[-2:] != (size, size):
        x = v2.functional.resize(x.float(), [size, size], antialias=True).round().clamp(0, 255).to(torch.uint8)
    return x.permute(1, 2, 0).contiguous()


def parity_pixels(ckpt: Path, record: dict, n: int) -> tuple[torch.Tensor, str]:
    """(uint8 (N, S, S, C) images at the network's input size S, C = the decoded channels; what
    they are): the run's first ``n`` test images, or ``n`` seeded random images when the run's data
    cannot be read (a checkpoint exported away from its data: the parity of the graph is checked
    on them instead)."""
    size, channels = int(record["input"]["size"]), int(record["decode"]["channels"])
    try:
        _, dataset = checkpoint_data(ckpt, "test")
    except (CheckpointError, DatasetError, FileNotFoundError, OSError, ValueError) as err:
        log.warning("%s: parity is checked on %d random images (%s)", ckpt, n, err)
        images = torch.randint(0, 256, (n, size, size, channels), generator=torch.Generator().manual_seed(0),
                               dtype=torch.uint8)
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        return images, f"{n} seeded random uint8 images (the run's test data cannot be read: {reason})"
    if len(dataset) == 0:
        raise CheckpointError(f"{ckpt}: the run's test set is empty; nothing to check the export on")
    n = min(n, len(dataset))
    return torch.stack([_at_size(dataset.uint8(i), channels, size) for i in range(n)]), f"the run's first {n} test images"


def trained_on(ckpt: Path) -> dict | None:
    """The identity of the data ``ckpt`` was trained on (``core.data_identity``, stored in the
    checkpoint by ``callbacks.run_config``); None for a checkpoint saved before runs named their data."""
    return ((stored_identity(ckpt) or {}).get("data") or {}).get("source")


def example_input(images: torch.Tensor) -> torch.Tensor:
    """``EXAMPLE_BATCH`` real images (repeating the first one if there are fewer)."""
    return images[[min(i, len(images) - 1) for i in range(EXAMPLE_BATCH)]]


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, record: dict, plain: dict[str, str],
                outputs: list[str]) -> None:
    """ONNX file with the preprocessing record and the plain keys (``deploy.metadata``) in its
    ``metadata_props``, ``model_version`` and ``doc_string`` set."""
    import onnx

    # torch.export-based exporter (the TorchScript-based one is deprecated since torch 2.9);
    # the dynamic shape is given positionally because forward's argument name varies (x, images).
    torch.onnx.export(
        model, (example,), str(path), dynamo=True, external_data=False, verbose=False,
        input_names=["images"], output_names=outputs,
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {**plain, METADATA_KEY: dumps(record)})
    proto.model_version = int(plain["model_version"])
    proto.doc_string = plain["description"]
    onnx.save(proto, str(path))


@contextmanager
def _quiet_jit() -> Iterator[None]:
    """Hide torch.jit's deprecation notices and tracer warnings (shape checks turned into
    constants); the parity check on real images is what guards the traced graph."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path, record: dict, plain: dict[str, str],
                       outputs: list[str]) -> None:
    """TorchScript file with the preprocessing record (extra file ``<METADATA_KEY>.json``) and
    each plain key (``deploy.metadata``) as an extra file of its own name."""
    extra = {**plain, f"{METADATA_KEY}.json": dumps(record)}
    with _quiet_jit(), torch.no_grad():
        torch.jit.save(torch.jit.trace(model, example), str(path), _extra_files=extra)


EXPORTERS = {"onnx": export_onnx, "torchscript": export_torchscript}


def load_runtime(path: Path, fmt: str, threads: int | None = None) -> Runtime:
    """A function images (B, C, H, W) -> logits (B, K) running the exported file on CPU;
    ``threads`` sets ONNX Runtime's intra/inter-op threads (None: its default)."""
    if fmt == "torchscript":
        with _quiet_jit():
            module = torch.jit.load(str(path), map_location="cpu").eval()
        return lambda x: first_output(module(x)).numpy()
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise ImportError("--format onnx needs onnxruntime: pip install 'medmae[export]'") from err
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = options.inter_op_num_threads = threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(["logits"], {"images": x.numpy()})[0]


def first_output(out: torch.Tensor | tuple) -> torch.Tensor:
    """The logits of a module's output: itself, or the first of (logits, probabilities)."""
    return out[0] if isinstance(out, tuple) else out


def run_exported(runtime: Runtime, images: torch.Tensor) -> np.ndarray:
    """Logits (N, K) of the exported model, in batches of ``PARITY_BATCH``."""
    return np.concatenate([runtime(batch) for batch in images.split(PARITY_BATCH)])


def parity_max_abs(net: nn.Module, runtime: Runtime, images: torch.Tensor) -> float:
    """Max abs difference between PyTorch's and the exported model's logits on ``images``."""
    with torch.inference_mode():
        expected = torch.cat([first_output(net(batch)) for batch in images.split(PARITY_BATCH)]).numpy()
        actual = run_exported(runtime, images)
    if actual.shape != expected.shape:
        raise ParityError(f"exported model returns logits of shape {actual.shape}, PyTorch {expected.shape}")
    return float(np.abs(actual.astype(np.float64) - expected).max())


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def median_latency_ms(call: Callable[[], object], runs: int, warmup: int = WARMUP) -> float:
    """Median wall time of ``call()`` in ms over ``runs`` timed calls after ``warmup`` untimed."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def latencies_ms(net: nn.Module, runtime: Runtime, image: torch.Tensor, runs: int) -> tuple[float, float]:
    """Batch-1 latency (exported, PyTorch eager) in ms of one image (1, C, H, W), ``THREADS`` threads."""
    with torch_threads(THREADS), torch.inference_mode():
        exported = median_latency_ms(lambda: runtime(image), runs)
        eager = median_latency_ms(lambda: first_output(net(image)).numpy(), runs)
    return exported, eager


def export_checkpoint(ckpt: Path, fmt: str, path: Path, parity_images: int, latency_runs: int,
                      tolerance: float, raw_input: bool = False, about: About = DEFAULT_ABOUT) -> dict:
    """Export ``ckpt`` to ``path``, check parity, time it; the figures of this one model.

    ``raw_input``: the graph takes uint8 (N, H, W, C) pixels and holds the scaling and mean / std
    normalisation (``deploy.graph``), returning logits and probabilities. The file is written to
    a temporary name and moved to ``path`` only after the parity check passed, so a failure never
    leaves a (half-written or wrong) model file.
    """
    net, record = checkpoint_network(ckpt)
    pixels, parity_source = parity_pixels(ckpt, record, parity_images)
    if raw_input:
        model, images, record, outputs = RawInputModel(net, record).eval(), pixels, raw_record(record), RAW_OUTPUTS
    else:
        with torch.no_grad():
            model, images, outputs = net, Preprocess(record)(pixels), ["logits"]
    data = trained_on(ckpt)
    plain = plain_metadata(record, about, type(net).__name__, data, outputs)
    created = not path.parent.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as tmp:
            EXPORTERS[fmt](model, example_input(images), tmp, record, plain, outputs)
            diff = parity_max_abs(model, load_runtime(tmp, fmt), images)
            if not diff <= tolerance:  # also catches NaN
                raise ParityError(
                    f"{fmt} export of {ckpt} differs from PyTorch by max abs {diff:.3g} on {len(images)} "
                    f"images, above the tolerance {tolerance:g}; no model file was written"
                )
            latency, eager = latencies_ms(model, load_runtime(tmp, fmt, THREADS), images[:1], latency_runs)
            size = tmp.stat().st_size
    finally:
        if created and not any(path.parent.iterdir()):
            path.parent.rmdir()
    return {
        "ckpt": str(ckpt), "format": fmt, "path": str(path), "network": type(net).__name__,
        "input_shape": list(images[:1].shape), "input_dtype": str(images.dtype).removeprefix("torch."),
        "outputs": outputs, "params": sum(p.numel() for p in net.parameters()),
        "size_mb": size / 1e6, "ckpt_size_mb": Path(ckpt).stat().st_size / 1e6,
        "latency_ms": latency, "latency_ms_eager": eager,
        "parity_max_abs": diff, "parity_images": len(images), "parity_source": parity_source,
        "preprocessing": record, "metadata": plain, "data": data,
    }


def protocol(fmt: str, latency_runs: int, parity_source: str, tolerance: float) -> str:
    return (
        f"CPU, fp32, batch 1, {THREADS} thread (torch.set_num_threads; ONNX Runtime intra/inter-op threads), "
        f"latency = median of {latency_runs} timed calls (time.perf_counter) after {WARMUP} warm-up calls, "
        f"for the {fmt} export and PyTorch eager; parity = max abs logit difference vs PyTorch on "
        f"{parity_source}, at the network's input size (tolerance {tolerance:g}); MB = 10^6 bytes."
    )


def markdown(result: dict) -> str:
    """The figures as a markdown table plus the protocol sentence."""
    lines = ["| model | format | params | size MB | latency ms (median) | PyTorch eager ms | parity max abs diff |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for role in ("export", "compare"):
        m = result.get(role)
        if m:
            name = f"{role}: {m['network']} ({Path(m['ckpt']).name})"
            lines.append(f"| {name} | {m['format']} | {m['params']:,} | {m['size_mb']:.3f} | {m['latency_ms']:.3f} "
                         f"| {m['latency_ms_eager']:.3f} | {m['parity_max_abs']:.2e} |")
    text = "\n".join(lines) + f"\n\nProtocol: {result['protocol']}\n"
    text += "".join(f"\n{role.capitalize()} model trained on: {describe(result[role].get('data'))}\n"
                    for role in ("export", "compare") if result.get(role))
    q = result.get("int8")
    if q:
        text += ("\n| int8 (ONNX Runtime static QDQ) | size MB | latency ms (median) | test acc fp32 | test acc int8 | "
                 "change | fp32 / int8 agreement |\n|---|---:|---:|---:|---:|---:|---:|\n"
                 f"| {Path(q['path']).name} | {q['size_mb']:.3f} | {q['latency_ms']:.3f} | {q['test_acc_fp32']:.4f} | "
                 f"{q['test_acc_int8']:.4f} | {q['acc_change']:+.4f} | {q['agreement']:.4f} |\n\n"
                 f"int8: weights per channel and activations in int8, ranges calibrated on {q['calibration_images']} "
                 f"training images (test-time transform); accuracy on all {q['test_images']} test images.\n")
    return text


def int8_figures(ckpt: Path, fp32: Path, latency_runs: int) -> dict:
    """Quantise the ONNX model ``fp32`` to int8 (``deploy.quantize``) next to it; its size,
    batch-1 latency and test accuracy against the fp32 model's on the whole test split."""
    datamodule, _ = checkpoint_data(ckpt, "test")
    path = fp32.with_name(f"{fp32.stem}.int8.onnx")
    quantize_int8(fp32, path, calibration_inputs(datamodule))
    images, labels = test_inputs(datamodule)
    logits = {name: run_exported(load_runtime(p, "onnx"), images) for name, p in (("fp32", fp32), ("int8", path))}
    acc = {name: accuracy(v, labels, datamodule.task) for name, v in logits.items()}
    int8_runtime = load_runtime(path, "onnx", THREADS)
    with torch_threads(THREADS), torch.inference_mode():
        latency = median_latency_ms(lambda: int8_runtime(images[:1]), latency_runs)
    return {"path": str(path), "size_mb": path.stat().st_size / 1e6, "latency_ms": latency,
            "test_images": len(labels), "calibration_images": CALIBRATION_IMAGES,
            "test_acc_fp32": acc["fp32"], "test_acc_int8": acc["int8"], "acc_change": acc["int8"] - acc["fp32"],
            "agreement": float((logits["fp32"].argmax(1) == logits["int8"].argmax(1)).mean()),
            "max_abs_logit_diff": float(np.abs(logits["fp32"] - logits["int8"]).max())}


def export_classifier(ckpt: Path, fmt: str, out: Path | None = None, compare: Path | None = None,
                      parity_images: int = 256, latency_runs: int = 100, tolerance: float = 1e-4,
                      quantize: str | None = None, raw_input: bool = False, about: About = DEFAULT_ABOUT) -> dict:
    """Export the classifier ``ckpt`` (``onnx`` | ``torchscript``), check and benchmark it.

    Returns ``{"export": figures, "compare": figures | None, "protocol", "threads", ...}``; the
    figures of a model are params, size_mb (file, 10^6 bytes), latency_ms / latency_ms_eager
    (batch 1, median), parity_max_abs and the paths. Writes ``export.json``, ``export.md`` and
    the MONAI-bundle-style ``metadata.json`` (``deploy.metadata``) next to the model file (see
    ``model_path``). ``raw_input``: preprocessing in the graph (``export_checkpoint``).
    """
    check_format(fmt)
    if quantize not in (None, "int8") or (quantize and (fmt != "onnx" or raw_input)):
        raise ValueError(f"--quantize {quantize} is invalid; allowed: int8, with --format onnx and float input "
                         "(without --preprocess-in-graph)")
    if parity_images < 1 or latency_runs < 1 or tolerance < 0:
        raise ValueError("--parity-images and --latency-runs must be >= 1 and --tolerance >= 0")
    ckpt, path = Path(ckpt), model_path(Path(ckpt), fmt, out)
    settings = {"parity_images": parity_images, "latency_runs": latency_runs, "tolerance": tolerance}
    compared = None
    if compare is not None:  # first, so that a failure there leaves no half-documented export
        with tempfile.TemporaryDirectory() as tmp:
            compared = export_checkpoint(Path(compare), fmt, Path(tmp) / FORMATS[fmt], **settings,
                                         raw_input=raw_input, about=about)
        compared["path"] = None  # measured in a temporary folder
    exported = export_checkpoint(ckpt, fmt, path, **settings, raw_input=raw_input, about=about)
    result = {
        "export": exported, "compare": compared, "threads": THREADS, "warmup_runs": WARMUP, **settings,
        "protocol": protocol(fmt, latency_runs, exported["parity_source"], tolerance),
        "int8": int8_figures(ckpt, path, latency_runs) if quantize == "int8" else None,
    }
    bundle = bundle_metadata(exported["preprocessing"], exported["metadata"], fmt, ckpt.name)
    atomic_write_text(path.parent / "metadata.json", json.dumps(bundle, indent=2))
    atomic_write_text(path.parent / "export.json", json.dumps(result, indent=2))
    atomic_write_text(path.parent / "export.md", markdown(result))
    return result


def log_export(run, result: dict, name: str) -> None:
    """Log the exported model with its ``metadata.json``, ``export.json`` and ``export.md`` to the
    W&B ``run`` as an artifact of type ``model`` named ``name`` (W&B numbers its versions), with
    the plain metadata keys and the parity figure as the artifact's metadata."""
    exported = result["export"]
    path = Path(exported["path"])
    meta = {**exported["metadata"], "format": exported["format"], "parity_max_abs": exported["parity_max_abs"],
            "source_checkpoint": exported["ckpt"]}
    files = (path, *(path.parent / n for n in ("metadata.json", "export.json", "export.md")))
    log_model_files(run, name, files, exported["metadata"]["description"], meta)


def artifact_name(ckpt: Path, fmt: str) -> str:
    """``<task_name>-<format>`` of the checkpoint's run (e.g. ``quickstart-onnx``)."""
    return f"{run_config(ckpt).get('task_name') or ckpt.stem}-{fmt}"


def flat_figures(result: dict) -> dict:
    """``export/<key>`` and ``compare/<key>`` for every figure of ``export_classifier``'s result
    (the preprocessing record and the training data's identity stay in export.json)."""
    return {f"{role}/{k}": v for role in ("export", "compare") for k, v in (result.get(role) or {}).items()
            if k not in ("preprocessing", "data", "metadata", "outputs")}


def run_export_stage(cfg) -> dict:
    """Pipeline stage: ``cfg.export`` = ``{ckpt, format (onnx), compare (or null), parity_images,
    latency_runs, tolerance, quantize, preprocess_in_graph, model_version, description (optional)}``;
    exports into ``cfg.paths.output_dir``; flat figures. Under ``trainer.fast_dev_run``
    (``debug=fdr``) the latency is measured over at most ``FAST_DEV_RUN_LATENCY_RUNS`` runs."""
    spec = cfg.export
    fmt = check_format(spec.get("format") or "onnx")
    latency_runs = spec.get("latency_runs", 100)
    if (cfg.get("trainer") or {}).get("fast_dev_run"):  # debug=fdr: the stage runs, its timing means nothing
        latency_runs = min(latency_runs, FAST_DEV_RUN_LATENCY_RUNS)
    compare = spec.get("compare")
    result = export_classifier(
        Path(spec.ckpt), fmt, Path(cfg.paths.output_dir) / FORMATS[fmt], Path(compare) if compare else None,
        parity_images=spec.get("parity_images", 256), latency_runs=latency_runs,
        tolerance=spec.get("tolerance", 1e-4), quantize=spec.get("quantize"),
        raw_input=bool(spec.get("preprocess_in_graph", False)),
        about=About(int(spec.get("model_version", 1)), spec.get("description")),
    )
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if wandb_cfg is not None:  # the pipeline logs to W&B: the exported model becomes a model artifact
        with wandb_job("export", wandb_cfg.get("project"), wandb_cfg.get("entity"), cfg.paths.output_dir) as run:
            log_export(run, result, artifact_name(Path(spec.ckpt), fmt))
    return flat_figures(result) | {f"int8/{k}": v for k, v in (result["int8"] or {}).items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt", help="a classifier checkpoint written by train.py, or a W&B model artifact "
                        "wandb:ENTITY/PROJECT/NAME:VERSION")
    # no argparse choices: an unknown format is a one-line error like every other bad input
    parser.add_argument("--format", default="onnx", metavar="{" + ",".join(FORMATS) + "}",
                        help="export format (default: onnx)")
    parser.add_argument("--out", type=Path, default=None,
                        help="model file or folder (default: <run dir>/export/model.onnx or model.pt)")
    parser.add_argument("--compare", type=Path, default=None, metavar="CKPT",
                        help="a second checkpoint (e.g. the teacher) to export and time the same way")
    parser.add_argument("--parity-images", type=int, default=256, help="test images of the parity check")
    parser.add_argument("--latency-runs", type=int, default=100, help="timed batch-1 calls (median)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="max abs logit difference allowed")
    parser.add_argument("--quantize", default=None, metavar="int8",
                        help="also write an int8 ONNX model (static, calibrated on training images) and its accuracy")
    parser.add_argument("--preprocess-in-graph", action="store_true",
                        help="the model takes uint8 pixels (N, H, W, C) at its input size; scaling, channel repeat "
                             "and mean / std normalisation run in the graph (outputs logits and probabilities)")
    parser.add_argument("--model-version", type=int, default=1, help="integer version written into the model (default 1)")
    parser.add_argument("--description", default=None, help="the model's description (default: written from its "
                        "classes, task and training data)")
    parser.add_argument("--wandb", action="store_true", help="log the exported model to W&B as a model artifact "
                        "(offline without credentials; always on for a wandb: checkpoint)")
    parser.add_argument("--wandb-project", default="medmae", help="W&B project for --wandb (default: medmae; a "
                        "wandb: checkpoint's own project otherwise)")
    args = parser.parse_args(argv)
    try:
        with artifact_job([args.ckpt], "export", log=args.wandb, project=args.wandb_project) as run:
            ckpt = resolve_checkpoint(args.ckpt, run)
            result = export_classifier(ckpt, args.format, args.out, args.compare, args.parity_images,
                                       args.latency_runs, args.tolerance, args.quantize, args.preprocess_in_graph,
                                       About(args.model_version, args.description))
            if run is not None:
                log_export(run, result, artifact_name(ckpt, args.format))
    except (CheckpointError, FileNotFoundError, ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ParityError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(markdown(result), end="")
    print(f"wrote {result['export']['path']} and export.json / export.md / metadata.json next to it")
    return 0
