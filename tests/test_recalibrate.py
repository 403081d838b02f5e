"""cxr.recalibrate: a site's own operating point from its labelled films (in this process: main() is the CLI)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr.calibration import logit
from cxr.intervals import exact_lower_bound, fewest_positives
from cxr.jsonio import read_json, write_json
from cxr.package import load_model
from cxr.recalibrate import main

TARGET = 0.9  # 29 pneumonia films support it (149 for 0.98): small enough for a test


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def site(tmp_path: Path, final_model_folder: Path):
    """80 random films labelled by the model's own score plus noise (so the model separates them), as a manifest;
    (manifest, raw mean probability per film in manifest order, labels)."""
    rng = np.random.default_rng(3)
    films = [tmp_path / "site" / f"film-{i:03d}.png" for i in range(80)]
    films[0].parent.mkdir()
    images = (rng.random((80, 40, 40)) * 255).astype(np.uint8)
    for film, pixels in zip(films, images):
        Image.fromarray(pixels).save(film)
    model = load_model(final_model_folder)
    from cxr.recalibrate import raw_probabilities

    raw = raw_probabilities(model, [str(f) for f in films], 10**6)
    labels = (raw + rng.normal(0, 0.002, len(raw)) > np.quantile(raw, 0.35)).astype(int)
    manifest = tmp_path / "site.csv"
    pd.DataFrame({"path": [f.name for f in films], "label": labels,
                  "patient": [f"p{i // 2}" for i in range(80)]}).to_csv(manifest, index=False)
    (tmp_path / "site.csv").rename(tmp_path / "site" / "site.csv")
    return tmp_path / "site" / "site.csv", raw, labels


def _source(tmp_path: Path, final_model_folder: Path, raw: np.ndarray, labels: np.ndarray, quantile: float) -> Path:
    """A copy of the model whose shipped threshold sits at `quantile` of the site's pneumonia scores (temperature 1):
    high quantiles miss site pneumonia (the site's films score lower than where the model came from)."""
    source = tmp_path / "source"
    shutil.copytree(final_model_folder, source)
    spec = read_json(source / "model.json")
    threshold = float(np.quantile(raw[labels == 1], quantile)) - 1e-4  # just below: round-off never decides
    write_json(source / "model.json", spec | {"temperature": 1.0, "threshold": threshold})
    return source


def _raw_cutoff(spec: dict) -> float:
    return float(logit(spec["threshold"]) * spec["temperature"])  # the threshold on the uncalibrated mean


@pytest.mark.parametrize("quantile, direction, rule", [(0.5, "down", "exact"), (0.0, "up", "point")])
def test_the_threshold_moves_to_where_the_site_needs_it_and_weights_stay_byte_identical(
        tmp_path, final_model_folder, site, quantile, direction, rule):
    manifest, raw, labels = site
    source = _source(tmp_path, final_model_folder, raw, labels, quantile)
    before = _hashes(source)
    out = tmp_path / "site-model"
    assert main(["--model", str(source), "--data", str(manifest), "--target-recall", str(TARGET), "--out", str(out),
                 "--threshold-rule", rule]) == 0
    assert _hashes(source) == before  # the source folder is never written to
    for member in read_json(source / "model.json")["members"]:
        assert (out / member["file"]).read_bytes() == (source / member["file"]).read_bytes()
    old, new = read_json(source / "model.json"), read_json(out / "model.json")
    moved = _raw_cutoff(new) - _raw_cutoff(old)
    assert moved < 0 if direction == "down" else moved > 0
    summary = read_json(out / "recalibration.json")
    assert summary["new"]["site"]["recall"] >= TARGET
    if direction == "down":  # the shipped threshold misses site pneumonia
        assert summary["old"]["site"]["recall"] < TARGET
    else:  # it flagged every pneumonia film and more: the site's keeps the target and flags fewer normals
        assert summary["old"]["site"]["recall"] == 1.0
        assert summary["new"]["site"]["specificity"] > summary["old"]["site"]["specificity"]
    assert summary["pneumonia_films"] == labels.sum() and summary["fewest_pneumonia_films_for_target"] == fewest_positives(TARGET)
    card = (out / "model_card.md").read_text()
    assert f"{old['threshold']:.4f}" in card and f"{new['threshold']:.4f}" in card and str(manifest.resolve()) in card
    assert [p["threshold"] for p in new["operating_points"]] == [old["threshold"], new["threshold"]]
    assert load_model(out).threshold == new["threshold"] and (out / "recalibration.html").is_file()
    expected = summary["new"]["out_of_sample"]  # in-sample and cross-validated figures side by side, everywhere
    assert expected["rule"] == rule == summary["new"]["rule"] and 0 < expected["recall"] <= 1
    assert f"recall {expected['recall']:.3f}" in card and f"by the {rule} rule" in card
    assert "cross-validated" in (out / "recalibration.html").read_text()


def test_a_cross_validated_shortfall_is_refused_unless_forced_and_then_stated(tmp_path, final_model_folder, site, capsys,
                                                                              assert_input_error, monkeypatch):
    import cxr.evaluation

    manifest, raw, labels = site
    short = {"folds": 5, "repeats": 3, "rule": "exact", "recall": 0.7, "recall_wilson95": [0.6, 0.8],
             "specificity": 0.9, "specificity_wilson95": [0.8, 0.95]}
    monkeypatch.setattr(cxr.evaluation, "out_of_sample", lambda *a, **k: short)
    args = ["--model", str(final_model_folder), "--data", str(manifest), "--target-recall", str(TARGET)]
    assert_input_error(main([*args, "--out", str(tmp_path / "refused")]), capsys.readouterr().err, "0.700", "--force")
    assert not (tmp_path / "refused").exists()
    assert main([*args, "--out", str(tmp_path / "forced"), "--force"]) == 0
    assert "written anyway (--force)" in (tmp_path / "forced" / "model_card.md").read_text()


def test_a_hostile_site_path_is_escaped_in_recalibration_html(tmp_path, final_model_folder, site):
    manifest, _, _ = site
    hostile = tmp_path / "<script>alert(1)</script>"  # folders "<script>alert(1)<" and "script>": whole in the path
    hostile.parent.mkdir()
    shutil.move(manifest.parent, hostile)  # the manifest's paths are relative to it: the films move with it
    out = tmp_path / "site-model"
    # --force: whatever the rule's cross-validated recall on these films, the page is written and read here
    assert main(["--model", str(final_model_folder), "--data", str(hostile / "site.csv"), "--target-recall",
                 str(TARGET), "--out", str(out), "--force"]) == 0
    page = (out / "recalibration.html").read_text()
    assert "<script" not in page and page.count("&lt;script&gt;alert(1)&lt;/script&gt;/site.csv") == 1


def test_too_few_pneumonia_films_is_refused_naming_how_many_are_needed(tmp_path, final_model_folder, site, capsys,
                                                                      assert_input_error):
    manifest, _, labels = site
    out = tmp_path / "site-model"
    code = main(["--model", str(final_model_folder), "--data", str(manifest), "--target-recall", "0.98", "--out", str(out)])
    assert_input_error(code, capsys.readouterr().err, f"{labels.sum()} pneumonia", "at least 149")
    assert not out.exists() and not list(tmp_path.glob(".site-model*"))
    assert fewest_positives(0.98) == 149 and exact_lower_bound(148, 148) < 0.98 <= exact_lower_bound(149, 149)


@pytest.mark.parametrize("where", ["existing", "inside"])
def test_an_existing_out_or_one_inside_the_source_is_refused(tmp_path, final_model_folder, site, capsys,
                                                             assert_input_error, where):
    manifest, raw, labels = site
    source = _source(tmp_path, final_model_folder, raw, labels, 0.5)
    before = _hashes(source)
    out = source / "site" if where == "inside" else tmp_path / "taken"
    if where == "existing":
        out.mkdir()
    code = main(["--model", str(source), "--data", str(manifest), "--target-recall", str(TARGET), "--out", str(out)])
    assert_input_error(code, capsys.readouterr().err, "--out")
    assert _hashes(source) == before and (where == "existing") == out.exists()
