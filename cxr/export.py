"""python -m cxr.export --model results/<name>/final --onnx model.onnx: the whole ensemble as one ONNX graph
(opset 17, dynamic batch), checked against PyTorch with onnxruntime. Needs `pip install -e ".[export]"`.

The graph takes a float32 batch (N, 3, S, S) of the grayscale film (uint8, decoded at S x S) repeated on 3 channels,
scaled to [0, 1] and normalised with model.json's mean and std, for every model alike; it returns the calibrated
pneumonia probability (N,) that model.json's threshold applies to (mirroring included when the model uses it). The
graph is float32 whatever precision the members trained and predict in: a runtime lowers it where it knows the
hardware. A model trained with histogram equalisation (config contrast_norm "equalize") has that step inside the
graph: it takes the film back to its 8-bit levels, equalises it as cxr does, and scales it again, so the caller never
applies it. A model trained with CLAHE (contrast_norm "clahe") is refused: kornia's tiled CLAHE does not go through
torch's ONNX exporter, and a graph without the step would score other films than the model saw."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxr.augment import mirror, mirror_mean
from cxr.cli import cli_entry
from cxr.errors import InputError

OPSET = 17
TOLERANCE = 1e-4
ONNX_CONTRAST_NORMS = ("none", "equalize")  # the contrast normalisations the graph can carry (not CLAHE)


class EnsembleGraph(nn.Module):
    """Members' sigmoid (with the mirrored film when tta), mean, then temperature scaling, as one module; in float64
    from the logits on, as cxr computes it (a float32 sigmoid saturates at 1 for confident films)."""

    def __init__(self, model):
        super().__init__()
        self.members = nn.ModuleList(model.members)
        self.tta, self.temperature = model.tta, float(model.temperature)
        self.contrast = _contrast_step(model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plain = self.contrast(x)
        mirrored = self.contrast(mirror(x)) if self.tta else None  # mirrored before the step, as cxr mirrors films
        probs = []
        for member in self.members:
            p = torch.sigmoid(member(plain).double())
            if self.tta:
                p = mirror_mean(p, torch.sigmoid(member(mirrored).double()))
            probs.append(p)
        tiny, epsneg = torch.finfo(torch.float64).tiny, torch.finfo(torch.float64).eps / 2
        mean = torch.stack(probs).mean(dim=0).clamp(tiny, 1 - epsneg)  # as cxr.calibration.logit clips
        return torch.sigmoid(torch.logit(mean) / self.temperature)


class _ContrastInGraph(nn.Module):
    """The graph's input back to the film's 8-bit levels (exactly: cxr scales uint8 films by 1/255), contrast-
    normalised by cxr's own step, and normalised again."""

    def __init__(self, pipeline):
        super().__init__()
        self.pipeline = pipeline

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pipeline
        films = (x[:, :1] * p.std[:, :1] + p.mean[:, :1]).mul(255).round().clamp(0, 255).div(255)
        return p.normalise(p.contrast(films))


def _contrast_step(model) -> nn.Module:
    if model.config.contrast_norm == "none":
        return nn.Identity()
    return _ContrastInGraph(_pipeline(model, model.config.contrast_norm))


def _pipeline(model, contrast_norm: str):
    from cxr.augment import BatchPipeline
    from cxr.models import data_config

    dc = data_config(model.members[0])
    return BatchPipeline(model.image_size, dc["mean"], dc["std"], contrast_norm=contrast_norm)


def normalised_batch(model, images: np.ndarray) -> torch.Tensor:
    """The graph's input for (N, S, S) uint8 films: scaled and normalised, without contrast normalisation (the
    graph applies the model's own)."""
    return _pipeline(model, "none")(torch.from_numpy(images), train=False)


def check_exportable(model) -> None:
    """One line naming why a model cannot become an ONNX graph that scores films as cxr does, and what to do."""
    if model.config.contrast_norm not in ONNX_CONTRAST_NORMS:
        raise InputError(f"the model normalises every film's contrast with {model.config.contrast_norm!r} (config "
                         "contrast_norm), which ONNX cannot carry (kornia's tiled CLAHE does not export): predict with "
                         f"cxr.predict or cxr.load_model, or export a model trained with contrast_norm "
                         f"{' or '.join(map(repr, ONNX_CONTRAST_NORMS))}")


def export_onnx(model, out: str | Path, check_images: np.ndarray) -> float:
    """Write the ONNX file; returns the largest |onnxruntime - PyTorch| probability difference on check_images."""
    check_exportable(model)
    try:
        import onnxruntime
    except ImportError:
        raise InputError('ONNX export needs onnx and onnxruntime: pip install -e ".[export]"') from None
    graph = EnsembleGraph(model).eval()
    x = normalised_batch(model, check_images)
    torch.onnx.export(graph, (x[:1],), str(out), input_names=["films"], output_names=["probability"], opset_version=OPSET,
                      dynamic_axes={"films": {0: "batch"}, "probability": {0: "batch"}}, dynamo=False)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    onnx_probs = session.run(None, {"films": x.numpy()})[0]
    torch_probs = model.probabilities(check_images, precision="fp32")  # what the graph computes
    return float(np.abs(onnx_probs - torch_probs).max())


def export_checked(model, out: str | Path) -> float:
    """export_onnx checked on 4 random films of the model's size: what cxr.export and --register ship."""
    films = np.random.default_rng(0).integers(0, 256, (4, model.image_size, model.image_size), dtype=np.uint8)
    return export_onnx(model, out, films)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxr.export", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the final/ folder of a finished tune.run experiment")
    parser.add_argument("--onnx", required=True, help="output .onnx file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --onnx file")
    args = parser.parse_args(argv)
    out = Path(args.onnx)
    if out.suffix.lower() != ".onnx":
        raise InputError(f"--onnx {out}: use a .onnx file name (the model folder's own files are never targets)")
    if out.exists() and not args.overwrite:
        raise InputError(f"--onnx {out} already exists: pass another path, remove it, or add --overwrite")
    from cxr.package import load_model

    model = load_model(args.model)
    diff = export_checked(model, out)
    if not diff <= TOLERANCE:
        out.unlink(missing_ok=True)  # a graph that disagrees with PyTorch must not be shipped by mistake
        print(f"error: onnxruntime and PyTorch disagree by {diff:.2e} (> {TOLERANCE:g}) on 4 films: {out} was removed",
              file=sys.stderr)
        return 1
    print(f"wrote {out} (opset {OPSET}, dynamic batch, {len(model.members)} member(s)); onnxruntime vs PyTorch on "
          f"4 films: max |difference| {diff:.2e} <= {TOLERANCE:g}: match")
    return 0


if __name__ == "__main__":
    sys.exit(main())
