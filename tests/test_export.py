"""python -m cxr.export: the ensemble as ONNX, checked against PyTorch with onnxruntime (dynamic batch)."""

from __future__ import annotations

import numpy as np
import onnxruntime
import torch


def test_onnx_matches_pytorch_for_any_batch(tmp_path, final_model_folder, capsys):
    from cxr.export import main, normalised_batch

    assert main(["--model", str(final_model_folder), "--onnx", str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr().out
    assert "match" in out and "opset 17" in out
    from cxr.package import load_model

    model = load_model(final_model_folder)
    films = np.random.default_rng(1).integers(0, 256, (7, 32, 32), dtype=np.uint8)
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {"films": normalised_batch(model, films).numpy()})[0]
    assert out.shape == (7,) and np.abs(out - model.probabilities(films)).max() < 1e-4


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
    import dataclasses

    from cxr.export import TOLERANCE, export_checked
    from cxr.package import load_model

    model = load_model(final_model_folder)
    for member in model.members:  # confident logits, as a trained member's: bf16's rounding of them then shows
        torch.nn.init.constant_(member.backbone.get_classifier().bias, 3.0)
    bf16 = dataclasses.replace(model, config=model.config.replace(precision="bf16"))
    films = np.random.default_rng(2).integers(0, 256, (4, 32, 32), dtype=np.uint8)
    assert np.abs(bf16.probabilities(films) - model.probabilities(films)).max() > TOLERANCE  # it predicts in bf16
    assert export_checked(bf16, tmp_path / "m.onnx") <= TOLERANCE  # checked against fp32, what the graph computes
