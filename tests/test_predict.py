"""python -m cxr.predict: a mixed folder with a corrupt file, DICOM included; Grad-CAM overlays keep the aspect."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr.config import TrainConfig
from cxr.models import create_model
from cxr.package import FinalModel
from test_dicom import write_dicom
from test_run import run_cli

REPO = Path(__file__).resolve().parents[1]


def _final(tmp_path: Path) -> Path:
    config = TrainConfig(backbone="test_efficientnet", pretrained=False, image_size=32)
    members = [create_model(config.backbone, pretrained=False).eval() for _ in range(2)]
    return FinalModel(config, members, [1, 2], threshold=0.5, temperature=1.3).save(tmp_path / "final")


def _predict(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cxr.predict", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_mixed_folder_with_a_corrupt_file(tmp_path):
    films = tmp_path / "films" / "nested"
    films.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (60, 40), dtype=np.uint8)).save(films / "a.png")
    Image.fromarray(rng.integers(0, 255, (50, 50), dtype=np.uint8)).save(films / "b.jpeg")
    write_dicom(films / "c.dcm", rng.integers(0, 4095, (64, 48)).astype(np.uint16), photometric="MONOCHROME1")
    (films / "d.png").write_bytes(b"broken")
    (films / "notes.txt").write_text("not a film")
    proc = _predict("--model", str(_final(tmp_path)), str(tmp_path / "films"), "--out", str(tmp_path / "p.csv"),
                    "--cam", str(tmp_path / "cam"))
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


def test_bad_arguments_exit_2(tmp_path):
    proc = _predict("--model", str(tmp_path), str(tmp_path))
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def _dicom_kaggle(root: Path, source: Path) -> Path:
    """The synthetic Kaggle folder re-encoded as 16-bit MONOCHROME1 DICOM films (names kept, suffix .dcm)."""
    for jpeg in source.rglob("*.jpeg"):
        target = root / jpeg.relative_to(source).with_suffix(".dcm")
        target.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.asarray(Image.open(jpeg).convert("L"), dtype=np.uint16) * 16
        write_dicom(target, (4095 - pixels).astype(np.uint16), photometric="MONOCHROME1")
    return root


TINY_RUN = ["--space", "smoke", "--num-samples", "1", "--max-epochs", "1", "--scheduler", "fifo", "--final-seeds", "1",
            "--image-size", "32"]


@pytest.mark.slow
def test_search_on_dicom_films_and_predictions_match_the_final_stage(tmp_path):
    from cxr.synthetic import make_synthetic

    source = make_synthetic(tmp_path / "jpeg", n_patients=60, size=48)
    data = _dicom_kaggle(tmp_path / "dicom", source)
    proc = run_cli("--data-dir", str(data), *TINY_RUN, "--results-dir", str(tmp_path / "r"), "--name", "dcm")
    assert proc.returncode == 0, proc.stderr[-4000:]
    saved = pd.read_parquet(tmp_path / "r" / "dcm" / "final" / "predictions.parquet").query("split == 'test'")
    assert saved["path"].str.endswith(".dcm").all() and len(saved)
    out = _predict("--model", str(tmp_path / "r" / "dcm" / "final"), *saved["path"], "--out", str(tmp_path / "p.parquet"))
    assert out.returncode == 0, out.stderr[-3000:]
    predicted = pd.read_parquet(tmp_path / "p.parquet")
    assert list(predicted["path"]) == list(saved["path"])
    assert np.allclose(predicted["probability"], saved["probability"], atol=1e-5)
    assert (predicted["decision"].to_numpy() == saved["prediction"].to_numpy()).all()


@pytest.mark.slow
def test_search_on_a_csv_manifest(tmp_path, synthetic_root):
    rows = [(str(p), p.parent.name) for p in sorted(synthetic_root.rglob("*.jpeg"))]
    pd.DataFrame(rows, columns=["path", "label"]).to_csv(tmp_path / "films.csv", index=False)
    proc = run_cli("--data-dir", str(tmp_path / "films.csv"), *TINY_RUN, "--results-dir", str(tmp_path / "r"), "--name", "csv")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("each image is treated as its own patient") == 1
    splits = pd.read_parquet(tmp_path / "r" / "csv" / "splits.parquet")
    assert set(splits["split"]) == {"train", "val", "test"} and len(splits) == len(rows)
