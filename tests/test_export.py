"""python -m cxr.export: the ensemble as ONNX, checked against PyTorch with onnxruntime (dynamic batch)."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnxruntime
import pytest
import torch


@pytest.mark.parametrize("contrast_norm, tta", [("none", False), ("equalize", True)])
def test_onnx_matches_pytorch_for_any_batch(tmp_path, final_model_folder, final_model_with, capsys, contrast_norm, tta):
    """Histogram equalisation happens inside the graph: its input is the same for every model, and a film's
    probability is the one cxr computes on the equalised film (mirrored before the step)."""
    from cxr.augment import BatchPipeline
    from cxr.export import EnsembleGraph, main, normalised_batch
    from cxr.models import data_config

    folder = final_model_folder if contrast_norm == "none" else final_model_with(tmp_path / "final", tta, contrast_norm)
    assert main(["--model", str(folder), "--onnx", str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr().out
    assert "match" in out and "opset 17" in out
    from cxr.package import load_model

    model = load_model(folder)
    films = np.random.default_rng(1).integers(0, 256, (7, 32, 32), dtype=np.uint8)
    films[:3] //= 4  # dark, flat films: what contrast normalisation changes most
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {"films": normalised_batch(model, films).numpy()})[0]
    assert out.shape == (7,) and np.abs(out - model.probabilities(films)).max() < 1e-4
    if contrast_norm != "none":  # the step matters to these members: an export without it could not match
        plain = dataclasses.replace(model, config=model.config.replace(contrast_norm="none"))
        assert np.abs(plain.probabilities(films) - model.probabilities(films)).max() > 1e-3
        # the graph's step sees the film's own 8-bit levels: every pixel equalised exactly as cxr equalises it
        dc = data_config(model.members[0])
        seen = BatchPipeline(32, dc["mean"], dc["std"], contrast_norm=contrast_norm)(torch.from_numpy(films), train=False)
        assert torch.equal(EnsembleGraph(model).contrast(normalised_batch(model, films)), seen)


def test_an_existing_file_or_a_non_onnx_name_is_refused_unread(tmp_path, final_model_folder, capsys):
    from cxr.export import main

    weights = final_model_folder / "member-0.safetensors"
    before = weights.read_bytes()
    assert main(["--model", str(final_model_folder), "--onnx", str(weights)]) == 2
    assert weights.read_bytes() == before and "use a .onnx file name" in capsys.readouterr().err
    (tmp_path / "m.onnx").write_bytes(b"keep me")
    assert main(["--model", str(final_model_folder), "--onnx", str(tmp_path / "m.onnx")]) == 2
    assert (tmp_path / "m.onnx").read_bytes() == b"keep me" and "--overwrite" in capsys.readouterr().err


def test_the_graph_is_fp32_whatever_precision_the_model_predicts_in(tmp_path, final_model_folder):
    from cxr.export import TOLERANCE, export_checked
    from cxr.package import load_model

    model = load_model(final_model_folder)
    for member in model.members:  # confident logits, as a trained member's: bf16's rounding of them then shows
        torch.nn.init.constant_(member.backbone.get_classifier().bias, 3.0)
    bf16 = dataclasses.replace(model, config=model.config.replace(precision="bf16"))
    films = np.random.default_rng(2).integers(0, 256, (4, 32, 32), dtype=np.uint8)
    assert np.abs(bf16.probabilities(films) - model.probabilities(films)).max() > TOLERANCE  # it predicts in bf16
    assert export_checked(bf16, tmp_path / "m.onnx") <= TOLERANCE  # checked against fp32, what the graph computes


def test_a_clahe_model_is_refused_in_one_line_and_nothing_is_written(tmp_path, final_model_with, capsys):
    from cxr.export import main

    folder = final_model_with(tmp_path / "final", contrast_norm="clahe")
    assert main(["--model", str(folder), "--onnx", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'clahe'" in err and "cxr.predict" in err
    assert not (tmp_path / "m.onnx").exists()
