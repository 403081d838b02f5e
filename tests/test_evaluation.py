"""cxr.evaluation: the whole evaluation dict from val/test predictions (calibration, threshold rules, intervals)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd

from cxr.evaluation import evaluate

KEYS = {"temperature", "threshold", "threshold_rule", "target_recall", "recall_confidence", "threshold_point",
        "threshold_ci95", "calibration", "val", "test", "test_at_0.5", "subgroups", "class_balance", "warnings",
        "n_boot", "bootstrap_seed", "rule_cost"}


def _predictions(test_shift: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """val and test films; test normals score higher by test_shift (a shifted test set); overconfident scores."""
    rng = np.random.default_rng(seed)
    rows = []
    for split, patients in (("val", 150), ("test", 120)):
        for patient in range(patients):
            label = int(rng.random() < 0.7)
            kind = "bacteria" if patient % 2 else "virus"
            for image in range(int(rng.integers(1, 3))):
                score = rng.normal(1.5 if label else -1.5, 1.0) + (test_shift if split == "test" and not label else 0)
                name = f"person{patient}_{kind}_{image}.jpeg" if label else f"IM-{patient:04d}-{image:04d}.jpeg"
                rows.append((f"/{split}/{name}", f"{split}{patient}", split, label, 1 / (1 + np.exp(-3 * score))))
    return pd.DataFrame(rows, columns=["path", "patient", "split", "label", "probability_raw"])


def test_every_field_and_a_threshold_that_reaches_target_recall_on_val():
    out = evaluate(_predictions(), target_recall=0.95, n_boot=500, seed=0)
    assert KEYS <= set(out)
    assert out["val"]["recall"] >= 0.95
    assert out["threshold"] == out["threshold_point"]
    assert out["calibration"]["val"]["after"]["log_loss"] < out["calibration"]["val"]["before"]["log_loss"]
    for split in ("val", "test"):
        for name in ("auroc", "recall", "specificity", "ppv", "npv", "accuracy"):
            low, high = out[split][f"{name}_ci95"]
            assert low <= out[split][name] <= high
    assert {g["kind"] for g in out["subgroups"]["test"]} == {"bacterial", "viral"}
    expected = out["out_of_sample"]  # the rule refitted on held-out val patients: what it does on further films
    assert expected["rule"] == "point" and expected["folds"] * expected["repeats"] == 15
    assert 0.8 < expected["recall"] <= 1 and expected["recall_wilson95"][0] <= expected["recall"] <= expected["recall_wilson95"][1]


def test_confidence_rule_lowers_the_threshold_and_reports_its_cost():
    point = evaluate(_predictions(), target_recall=0.95, n_boot=500)
    confident = evaluate(_predictions(), target_recall=0.95, recall_confidence=0.95, n_boot=500)
    assert confident["threshold"] <= point["threshold"] == confident["threshold_point"]
    assert "lower confidence bound" in confident["threshold_rule"]
    assert confident["rule_cost"]["val_specificity_chosen"] <= confident["rule_cost"]["val_specificity_point_rule"]


def test_shifted_test_set_raises_a_warning_and_no_test_split_says_so():
    shifted = evaluate(_predictions(test_shift=2.5), target_recall=0.95, n_boot=500)
    assert any("disagree on specificity" in w for w in shifted["warnings"]), shifted["warnings"]
    val_only = evaluate(_predictions().query("split == 'val'"), target_recall=0.95, n_boot=200)
    assert val_only["test"] is None and any("no test split" in w for w in val_only["warnings"])


EVALUATE_AT_SCALE = """
import resource, sys
import numpy as np, pandas as pd
from cxr.evaluation import evaluate

films, patients = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
patient = np.sort(np.r_[np.arange(patients), rng.integers(0, patients, films - patients)])
label = (rng.random(patients) < 0.65).astype(int)[patient]
table = pd.DataFrame({"path": [f"/site/film{i}.png" for i in range(films)], "patient": patient.astype(str),
                      "split": np.where(rng.random(patients) < 0.5, "val", "test")[patient], "label": label,
                      "probability_raw": 1 / (1 + np.exp(-2 * rng.normal(np.where(label, 1.2, -1.2), 1.0)))})
resident = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() // 2**20
out = evaluate(table, target_recall=0.98, recall_confidence=0.95)
peak = int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1]) // 1024
print("above-baseline-MiB", peak - resident, "test-images", out["test"]["images"], "auroc", out["test"]["auroc"])
"""


def test_fifty_thousand_films_of_twenty_thousand_patients_evaluate_in_linear_memory():
    """The whole evaluation (temperature, both threshold rules, every interval, subgroups) in a fresh process: its
    peak RSS above the resident size before it stays under 1 GiB (a films x scores matrix needed 17 GiB). VmHWM is
    the process's own peak; ru_maxrss would start at pytest's RSS at the fork."""
    done = subprocess.run([sys.executable, "-c", EVALUATE_AT_SCALE, "50000", "20000"], capture_output=True, text=True,
                          timeout=300)
    words = done.stdout.split()
    assert words[:1] == ["above-baseline-MiB"], done.stdout + done.stderr
    assert int(words[1]) < 1024, f"the evaluation of 50,000 films grew the peak RSS by {words[1]} MiB"
    assert 0 < int(words[3]) < 50000 and 0.9 < float(words[5]) < 1.0
