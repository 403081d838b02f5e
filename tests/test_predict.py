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


def test_mixed_folder_with_a_corrupt_file(tmp_path, final_model_folder, write_dicom, capsys):
    from cxr.predict import main

    films = tmp_path / "films" / "nested"
    films.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (60, 40), dtype=np.uint8)).save(films / "a.png")
    Image.fromarray(rng.integers(0, 255, (50, 50), dtype=np.uint8)).save(films / "b.jpeg")
    write_dicom(films / "c.dcm", rng.integers(0, 4095, (64, 48)).astype(np.uint16), photometric="MONOCHROME1")
    (films / "d.png").write_bytes(b"broken")
    (films / "notes.txt").write_text("not a film")
    code = main(["--model", str(final_model_folder), str(tmp_path / "films"), "--out", str(tmp_path / "p.csv"),
                 "--cam", str(tmp_path / "cam")])
    err = capsys.readouterr().err
    assert code == 1, err[-3000:]
    assert "4 film(s)" in err and "1 unreadable" in err
    table = pd.read_csv(tmp_path / "p.csv")
    assert [Path(p).name for p in table["path"]] == ["a.png", "b.jpeg", "c.dcm", "d.png"]
    good = table.iloc[:3]
    assert good["probability"].between(0, 1).all() and good["error"].isna().all() and set(good["decision"]) <= {0, 1}
    assert np.isnan(table["probability"][3]) and isinstance(table["error"][3], str)
    for name, size in (("a.png", (40, 60)), ("c.dcm", (48, 64))):  # (width, height) of the film itself
        with Image.open(tmp_path / "cam" / f"{name}.cam.png") as overlay:
            assert overlay.size == size
    assert list(table["cam"].isna()) == [False, False, False, True]


def _film(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 30), dtype=np.uint8)).save(path)
    return path


def test_films_of_the_same_name_in_two_studies_get_their_own_rows_and_overlays(tmp_path, final_model_folder, capsys):
    from cxr.predict import main

    a, b = _film(tmp_path / "studyA" / "IM0001.png", 1), _film(tmp_path / "studyB" / "IM0001.png", 2)
    code = main(["--model", str(final_model_folder), str(tmp_path / "studyA"), str(tmp_path / "studyB"), str(a),
                 "--out", str(tmp_path / "p.csv"), "--cam", str(tmp_path / "cam")])
    assert code == 0, capsys.readouterr().err
    table = pd.read_csv(tmp_path / "p.csv")
    assert list(table["path"]) == [str(a), str(b)]  # a film reached twice is one row
    assert list(table["cam"]) == [str(tmp_path / "cam" / "studyA" / "IM0001.png.cam.png"),
                                  str(tmp_path / "cam" / "studyB" / "IM0001.png.cam.png")]
    overlays = [np.asarray(Image.open(c)) for c in table["cam"]]
    assert not np.array_equal(*overlays)  # each overlay is its own film's


def test_existing_outputs_are_refused_unless_overwrite(tmp_path, final_model_folder, capsys):
    from cxr.predict import main

    film = _film(tmp_path / "films" / "a.png", 0)
    (tmp_path / "p.csv").write_text("keep me")
    args = ["--model", str(final_model_folder), str(film), "--out", str(tmp_path / "p.csv")]
    assert main(args) == 2 and "add --overwrite" in capsys.readouterr().err
    assert (tmp_path / "p.csv").read_text() == "keep me"
    overlay = tmp_path / "cam" / "a.png.cam.png"
    overlay.parent.mkdir()
    overlay.write_text("keep me too")
    assert main([*args[:3], "--cam", str(tmp_path / "cam")]) == 2 and "--cam" in capsys.readouterr().err
    assert overlay.read_text() == "keep me too"
    assert main([*args, "--overwrite"]) == 0 and pd.read_csv(tmp_path / "p.csv")["path"].tolist() == [str(film)]


def _hostile_films(folder: Path, write_dicom, png_header) -> dict[str, str]:
    """Files a hospital export or an attacker may hand over, each with the words its error row must carry."""
    import pydicom

    folder.mkdir()
    (folder / "bomb.png").write_bytes(png_header(20000, 20000))
    Image.fromarray(np.arange(100, dtype=np.uint8).reshape(10, 10)).save(folder / "tiff.png", format="TIFF")
    (folder / "eps.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    for tag in ("Rows", "BitsAllocated"):
        path = write_dicom(folder / f"no-{tag}.dcm", np.arange(64, dtype=np.uint16).reshape(8, 8))
        ds = pydicom.dcmread(path)
        delattr(ds, tag)
        ds.save_as(str(path))
    Image.fromarray(np.full((20, 20), 9, np.uint8)).save(folder / "blank.png")
    return {"bomb.png": "exceed", "tiff.png": "not a PNG file", "eps.png": "not a PNG file",
            "no-Rows.dcm": "without Rows", "no-BitsAllocated.dcm": "without BitsAllocated", "blank.png": "constant"}


def test_every_hostile_film_gets_its_error_row_and_the_others_are_predicted(tmp_path, final_model_folder, write_dicom,
                                                                          png_header, capsys):
    from cxr.predict import main

    expected = _hostile_films(tmp_path / "films", write_dicom, png_header)
    good = _film(tmp_path / "films" / "good.png", 3)
    assert main(["--model", str(final_model_folder), str(tmp_path / "films"), "--out", str(tmp_path / "p.csv")]) == 1
    assert "Traceback" not in capsys.readouterr().err
    table = pd.read_csv(tmp_path / "p.csv").set_index("path")
    assert len(table) == len(expected) + 1
    assert np.isfinite(table.loc[str(good), "probability"]) and pd.isna(table.loc[str(good), "error"])
    for name, words in expected.items():
        row = table.loc[str(tmp_path / "films" / name)]
        assert np.isnan(row["probability"]) and words in row["error"], (name, row["error"])


@pytest.mark.parametrize("contrast_norm", ["equalize", "clahe"])
def test_predict_repeats_the_final_stage_on_contrast_normalised_films(tmp_path, synthetic_data, contrast_norm, capsys):
    """A member trained and scored by the final stage with contrast normalisation: cxr.predict on the same test files
    gives the final stage's probabilities and decisions, and Grad-CAM looks at the film the members saw."""
    import dataclasses

    from cxr.cam import grad_cam
    from cxr.config import TrainConfig
    from cxr.ensemble import assemble, train_member
    from cxr.images import decode
    from cxr.predict import main

    config = TrainConfig(backbone="test_efficientnet", pretrained=False, image_size=synthetic_data.image_size, epochs=1,
                         augment=0.0, contrast_norm=contrast_norm, target_recall=0.9)
    model, _, predictions, _ = assemble(config, [train_member(config, synthetic_data)], synthetic_data, n_boot=20)
    model.save(tmp_path / "final")
    saved = predictions.query("split == 'test'")
    assert main(["--model", str(tmp_path / "final"), *saved["path"], "--out", str(tmp_path / "p.parquet")]) == 0
    predicted = pd.read_parquet(tmp_path / "p.parquet")
    assert np.allclose(predicted["probability"], saved["probability"], atol=1e-5)
    assert (predicted["decision"].to_numpy() == saved["prediction"].to_numpy()).all()
    films = np.stack([decode(p, config.image_size) for p in saved["path"][:8]])
    plain = dataclasses.replace(model, config=config.replace(contrast_norm="none"))
    assert np.abs(plain.probabilities(films) - model.probabilities(films)).max() > 1e-3  # the step is not a no-op
    heat = grad_cam(model.members, films[0], config.image_size, contrast_norm=contrast_norm)
    assert not np.allclose(heat, grad_cam(model.members, films[0], config.image_size, contrast_norm="none"))


def test_bad_arguments_exit_2(tmp_path, run_module):
    proc = run_module("cxr.predict", "--model", str(tmp_path), str(tmp_path))
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


FROZEN_PRETRAINED_SPACE = """
def space(trial):
    trial.suggest_float('lr', 1e-3, 1e-2, log=True)
    return {'backbone': 'test_efficientnet', 'pretrained': True, 'unfrozen_blocks': 0, 'image_size': 32, 'epochs': 1,
            'contrast_norm': 'clahe'}
"""


@pytest.mark.slow
def test_data_parallel_search_on_a_dicom_manifest_from_driver_weights_and_predictions_that_match(
        tmp_path, demo, run_cli, write_dicom):
    """One run covers four paths: a CSV manifest without patient or split columns, films that are 16-bit
    MONOCHROME1 DICOM, --weights-dir read once by the driver (trials start from exactly those weights: the frozen
    stem is unchanged in the shipped model) and a 2-process data-parallel trial (Ray Train, gloo) that reports what
    a single-process trial of the demo reports. Every film is contrast-normalised (CLAHE): cxr.predict on the test
    films then equals the final stage."""
    import timm
    from safetensors.torch import load_file, save_file

    from cxr.synthetic import create_synthetic

    source = create_synthetic(tmp_path / "jpeg", n_patients=60, size=48)
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
                   str(weights), "--num-samples", "1", "--trial-scheduler", "fifo", "--final-members", "1",
                   "--no-robustness", "--workers-per-trial", "2", "--cpus-per-trial", "0.5",
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
    from cxr.predict import main

    assert main(["--model", str(folder / "final"), *saved["path"], "--out", str(tmp_path / "p.parquet")]) == 0
    predicted = pd.read_parquet(tmp_path / "p.parquet")
    assert list(predicted["path"]) == list(saved["path"])
    assert np.allclose(predicted["probability"], saved["probability"], atol=1e-5)
    assert (predicted["decision"].to_numpy() == saved["prediction"].to_numpy()).all()
