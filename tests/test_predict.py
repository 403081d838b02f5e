"""python -m cxr.predict: a mixed folder with a corrupt file, DICOM included; Grad-CAM overlays keep the aspect; and
end to end, a search on a CSV manifest of DICOM films from driver-side weights whose test predictions cxr.predict
repeats exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image


def test_mixed_folder_with_a_corrupt_file(tmp_path, final_model_folder, run_module, write_dicom):
    films = tmp_path / "films" / "nested"
    films.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (60, 40), dtype=np.uint8)).save(films / "a.png")
    Image.fromarray(rng.integers(0, 255, (50, 50), dtype=np.uint8)).save(films / "b.jpeg")
    write_dicom(films / "c.dcm", rng.integers(0, 4095, (64, 48)).astype(np.uint16), photometric="MONOCHROME1")
    (films / "d.png").write_bytes(b"broken")
    (films / "notes.txt").write_text("not a film")
    proc = run_module("cxr.predict", "--model", str(final_model_folder), str(tmp_path / "films"),
                      "--out", str(tmp_path / "p.csv"), "--cam", str(tmp_path / "cam"))
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "4 film(s)" in proc.stderr and "1 unreadable" in proc.stderr and "Traceback" not in proc.stderr
    table = pd.read_csv(tmp_path / "p.csv")
    assert [Path(p).name for p in table["path"]] == ["a.png", "b.jpeg", "c.dcm", "d.png"]
    good = table.iloc[:3]
    assert good["probability"].between(0, 1).all() and good["error"].isna().all() and set(good["decision"]) <= {0, 1}
    assert np.isnan(table["probability"][3]) and isinstance(table["error"][3], str)
    for name, size in (("a", (40, 60)), ("c", (48, 64))):  # (width, height) of the film itself
        with Image.open(tmp_path / "cam" / f"{name}.cam.png") as overlay:
            assert overlay.size == size


def test_bad_arguments_exit_2(tmp_path, run_module):
    proc = run_module("cxr.predict", "--model", str(tmp_path), str(tmp_path))
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


FROZEN_PRETRAINED_SPACE = """
def space(trial):
    trial.suggest_float('lr', 1e-3, 1e-2, log=True)
    return {'backbone': 'test_efficientnet', 'pretrained': True, 'unfrozen_blocks': 0, 'image_size': 32, 'epochs': 1}
"""


@pytest.mark.slow
def test_data_parallel_search_on_a_dicom_manifest_from_driver_weights_and_predictions_that_match(
        tmp_path, demo, run_cli, run_module, write_dicom):
    """One run covers four paths: a CSV manifest without patient or split columns, films that are 16-bit
    MONOCHROME1 DICOM, --weights-dir read once by the driver (trials start from exactly those weights: the frozen
    stem is unchanged in the shipped model) and a 2-process data-parallel trial (Ray Train, gloo) that reports what
    a single-process trial of the demo reports. cxr.predict on the test films then equals the final stage."""
    import timm
    from safetensors.torch import load_file, save_file

    from cxr.synthetic import make_synthetic

    source = make_synthetic(tmp_path / "jpeg", n_patients=60, size=48)
    rows = []
    for jpeg in sorted(source.rglob("*.jpeg")):
        target = tmp_path / "dicom" / jpeg.relative_to(source).with_suffix(".dcm")
        target.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.asarray(Image.open(jpeg).convert("L"), dtype=np.uint16) * 16
        rows.append((str(write_dicom(target, (4095 - pixels).astype(np.uint16), photometric="MONOCHROME1")), jpeg.parent.name))
    pd.DataFrame(rows, columns=["path", "label"]).to_csv(tmp_path / "films.csv", index=False)
    weights = tmp_path / "weights"
    weights.mkdir()
    torch.manual_seed(123)
    reference = timm.create_model("test_efficientnet").state_dict()
    save_file(reference, str(weights / "test_efficientnet.safetensors"))
    (tmp_path / "frozen.py").write_text(FROZEN_PRETRAINED_SPACE)

    proc = run_cli("--data-dir", str(tmp_path / "films.csv"), "--space", str(tmp_path / "frozen.py"), "--weights-dir",
                   str(weights), "--num-samples", "1", "--trial-scheduler", "fifo", "--final-seeds", "1",
                   "--workers-per-trial", "2", "--cpus-per-trial", "0.5",
                   "--results-dir", str(tmp_path / "r"), "--name", "dcm")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("each image is treated as its own patient") == 1
    folder = tmp_path / "r" / "dcm"
    splits = pd.read_parquet(folder / "splits.parquet")
    assert set(splits["split"]) == {"train", "val", "test"} and len(splits) == len(rows)
    trial, epochs = pd.read_parquet(folder / "trials.parquet").iloc[0], pd.read_parquet(folder / "epochs.parquet")
    assert (trial["status"], trial["epochs_run"]) == ("completed", 1) and list(epochs["epoch"]) == [1]
    single = pd.read_parquet(demo.folder / "epochs.parquet")
    metric_columns = sorted(c for c in single.columns if c.startswith(("val_", "train_")) or c in ("epoch", "lr", "best_epoch"))
    assert set(metric_columns) <= set(epochs.columns)
    assert epochs[["lr", "train_loss", "val_loss", "val_auroc", "val_spec_at_recall"]].notna().all().all()
    final = load_file(str(folder / "final" / "member-0.safetensors"))
    assert torch.equal(final["backbone.conv_stem.weight"], reference["conv_stem.weight"])
    assert final["backbone.classifier.weight"].shape[0] == 1  # the new one-logit head, not the file's

    saved = pd.read_parquet(folder / "final" / "predictions.parquet").query("split == 'test'")
    assert saved["path"].str.endswith(".dcm").all() and len(saved)
    out = run_module("cxr.predict", "--model", str(folder / "final"), *saved["path"], "--out", str(tmp_path / "p.parquet"))
    assert out.returncode == 0, out.stderr[-3000:]
    predicted = pd.read_parquet(tmp_path / "p.parquet")
    assert list(predicted["path"]) == list(saved["path"])
    assert np.allclose(predicted["probability"], saved["probability"], atol=1e-5)
    assert (predicted["decision"].to_numpy() == saved["prediction"].to_numpy()).all()
