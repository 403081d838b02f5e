"""Do the robustness levers and the shift-aware metric choose models that hold up on films from another acquisition?
(issue 30, point 3)

1. ../shared/data/kermany224/train is scanned (patients from file names); --test-share of its patients (seeded, the
   same for every arm and seed) are a pseudo-test that no tune.run is given. Of the other patients, --fraction go to
   the search: a manifest whose rows are all split=train, so tune.run holds val out by patient with its --seed (as
   for the Kaggle folder, there is no test split).
2. Per seed, one `python -m tune.run` per arm, each with the same --time-budget, `--space ... --backbones
   tf_efficientnet_lite0 --weights-dir ../shared/weights --target-recall 0.98 --seed <seed>`:
   - today: benchmarks/spaces/cpu_no_levers.py (cpu's space with every lever off, `augment` searched as before the
     levers) ranked by val_spec_at_recall;
   - levers: the cpu space (which searches the levers) ranked by val_spec_at_recall;
   - levers+shift: the cpu space ranked by val_shift_spec_at_recall (val under cxr.shift's SELECTION_BANK).
3. Each arm's final model (final/, as cxr.load_model reads it) scores the pseudo-test decoded at its image size: AUROC,
   recall and specificity at its shipped threshold (fixed on val for recall 0.98 by the exact rule), on the films as
   they are and under every perturbation of cxr.shift's ROBUSTNESS_BANK, which shares no perturbation with the
   selection bank (nothing is judged on what it was selected on). Shifted = the mean over the bank; the worst family
   is the family of lowest mean specificity.
4. Tables: one row per arm and seed; per arm the mean, min and max over seeds; and issue 30's rule for a default: an
   arm beats today only if its shifted pseudo-test specificity beats today's in every seed, or on average by more
   than the seeds' spread (the larger of the two arms' max - min).

Sized for about two hours on a 2-core CPU with the defaults: 3 arms x 3 seeds of an 8-minute budget and a few
minutes of scoring each; every run at 128 px with a one-member final model (SIZING; flags after `--` override it).
Measured with `--time-budget 6m` (BENCHMARKS.md):
9 runs in 4,668 s, each 4.2-6.4 min and 1.2-2.8 min of scoring on a quiet machine; 3-8 trials a run, so TPE (from the
11th trial) never steered: a comparison of what TPE finds needs four to five times the budget.

Every run that this same command finished is read back, not run again (--out keeps them); a run that stopped
part-way runs again from the start (a budget resumed is not the same budget); a finished run of other flags is
refused. Arguments after `--` go to every tune.run as they are.

    CXR_CACHE_DIR=benchmarks/out/cache python benchmarks/bench_shift.py --out benchmarks/out/shift [--seeds 0 1 2]
        [--time-budget 8m] [--fraction 0.2] [--test-share 0.1] [-- <more tune.run flags>]

Writes to --out: search.csv and pseudo-test.csv (the manifests), results/<arm>-seed<k>/ (the experiments), logs/,
scores/<arm>-seed<k>.json (the pseudo-test scores, per perturbation too), runs.csv, summary.csv and shift.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from common import DEFAULT_DATA, DEFAULT_WEIGHTS, OUT, REPO, cache_dir, cache_env, machine, markdown_table, patient_subset

TODAY_SPACE = REPO / "benchmarks" / "spaces" / "cpu_no_levers.py"
ARMS = {  # arm: the flags that make it (each names its --metric, so a changed default does not change an arm)
    "today": ["--space", str(TODAY_SPACE.relative_to(REPO)), "--metric", "val_spec_at_recall"],
    "levers": ["--space", "cpu", "--metric", "val_spec_at_recall"],
    "levers+shift": ["--space", "cpu", "--metric", "val_shift_spec_at_recall"],
}
BASELINE_ARM = "today"
# what makes 3 arms x 3 seeds fit about two hours on 2 CPU cores, the same for every arm (flags after `--` win): films
# at 128 px (cpu draws 128-192; the size is no lever) and a final model of one member (scoring costs 11 mirrored
# passes of every member over the pseudo-test: one member at 128 px took 108 s for 266 films on 2 shared cores)
SIZING = ["--image-size", "128", "--final-members", "1"]
BACKBONE = "tf_efficientnet_lite0"  # the one backbone whose weights every machine here has at ../shared/weights
TARGET_RECALL = 0.98
TEST_SEED = 30  # of the pseudo-test's patients: the same films for every arm and seed
SEARCH_SEED = 31  # of the search's patients among the others
SCORES = ("auroc", "recall", "specificity")


def make_manifests(data_dir: Path, test_share: float, fraction: float, out: Path) -> tuple[Path, pd.DataFrame]:
    """(search.csv, the pseudo-test's rows): disjoint by patient; both written to out."""
    from cxr.kaggle import scan

    frame = scan(data_dir)[["path", "label", "patient"]]
    held_out = frame.index.isin(patient_subset(frame, test_share, TEST_SEED).index)
    pseudo_test, pool = frame[held_out].reset_index(drop=True), frame[~held_out]
    search = patient_subset(pool, fraction, SEARCH_SEED, min_patients=10).assign(split="train")
    assert not set(search["patient"]) & set(pseudo_test["patient"]), "a pseudo-test patient reached the search"
    search.to_csv(out / "search.csv", index=False)
    pseudo_test.to_csv(out / "pseudo-test.csv", index=False)
    return out / "search.csv", pseudo_test


def claim_out(out: Path, setup: dict) -> None:
    """Record what the runs in out were made on; refuse other data or shares there (their runs would be read back)."""
    recorded = out / "setup.json"
    if recorded.is_file() and json.loads(recorded.read_text()) != setup:
        raise SystemExit(f"{out} holds runs of {recorded.read_text().strip()}, not {json.dumps(setup)}: pass another --out")
    out.mkdir(parents=True, exist_ok=True)
    recorded.write_text(json.dumps(setup))


def arm_command(arm: str, seed: int, manifest: Path, time_budget: str, weights_dir: Path, results: Path,
                extra: list[str]) -> list[str]:
    """The tune.run arguments of one arm and seed (after `python -m tune.run`)."""
    return [*ARMS[arm], "--backbones", BACKBONE, "--weights-dir", str(weights_dir), "--data-dir", str(manifest),
            "--time-budget", time_budget, "--target-recall", str(TARGET_RECALL), "--seed", str(seed),
            "--results-dir", str(results), "--name", run_name(arm, seed), *SIZING, *extra]


def run_name(arm: str, seed: int) -> str:
    return f"{arm}-seed{seed}"


def run_arm(command: list[str], out: Path) -> float:
    """The experiment's wall time: read back when this same command finished it, else measured by running it (what a
    stopped run left, its folder and its scores, is removed first). A finished run of another command is refused,
    never removed: it is a measurement."""
    name = command[command.index("--name") + 1]
    folder, timing = out / "results" / name, out / "logs" / f"{name}.json"
    if (folder / "final" / "model.json").is_file() and timing.is_file():
        saved = json.loads(timing.read_text())
        if saved["command"] != command:
            raise SystemExit(f"{folder} was made by another command ({timing}): pass another --out")
        return saved["wall_s"]
    shutil.rmtree(folder, ignore_errors=True)
    (out / "scores" / f"{name}.json").unlink(missing_ok=True)
    timing.parent.mkdir(parents=True, exist_ok=True)
    print("$ python -m tune.run", " ".join(command), flush=True)
    started = time.monotonic()
    with open(timing.with_suffix(".log"), "w") as log:
        code = subprocess.run([sys.executable, "-m", "tune.run", *command], cwd=REPO, env=cache_env(), stdout=log,
                              stderr=subprocess.STDOUT).returncode
    wall = time.monotonic() - started
    if code != 0:
        raise SystemExit(f"tune.run exited {code}; the end of {timing.with_suffix('.log')}:\n"
                         f"{timing.with_suffix('.log').read_text()[-3000:]}")
    timing.write_text(json.dumps({"command": command, "wall_s": round(wall, 1)}))
    return wall


def check_banks_disjoint() -> None:
    """The pseudo-test is judged under no perturbation a trial was selected on (same family and magnitude)."""
    from cxr.shift import ROBUSTNESS_BANK, SELECTION_BANK

    shared = {p.name for p in ROBUSTNESS_BANK} & {p.name for p in SELECTION_BANK}
    if shared:
        raise ValueError(f"the robustness bank repeats the selection bank's {sorted(shared)}")


def model_image_size(folder: Path) -> int:
    """The size the model takes, from its model.json: the pseudo-test is decoded at it, as cxr.predict decodes."""
    from cxr.jsonio import read_json

    return int(read_json(folder / "model.json")["image_size"])


def score_model(folder: Path, images: np.ndarray, labels, patients, n_boot: int = 2000) -> dict:
    """A final model folder on films it never saw: AUROC, recall and specificity at its shipped threshold (with
    patient-bootstrap 95 % intervals over n_boot resamples) on images as they are ("plain") and under each perturbation
    of cxr.shift.ROBUSTNESS_BANK ("perturbations"), their mean over the bank ("shifted") and the family of lowest mean
    specificity ("worst"). images: (N, S, S) uint8 films in the order of labels and patients, best decoded at the
    model's image size."""
    from cxr import load_model
    from cxr.intervals import metrics_with_intervals
    from cxr.resamples import patient_bootstrap
    from cxr.robustness import robustness

    check_banks_disjoint()
    model = load_model(folder)
    labels, patients = np.asarray(labels), np.asarray(patients)
    plain = metrics_with_intervals(labels, model.probabilities(images), model.threshold,
                                   patient_bootstrap(patients, n_boot, 0))
    members = [f"member_{i}" for i in range(len(model.members))]
    # cxr.robustness scores the rows of split "test" and runs a member on the rows its column has a number in: all
    films = pd.DataFrame({"split": "test", "label": labels, "patient": patients, **dict.fromkeys(members, 1.0)})
    # the shipped operating point; "val" names films this frame has none of, so only the pseudo-test is scored
    evaluation = {"threshold_chosen_on": "val", "threshold": model.threshold, "temperature": model.temperature,
                  "n_boot": n_boot, "bootstrap_seed": 0}
    perturbed = robustness(model.members, images, films, members, evaluation, tta=model.tta,
                           image_size=model.image_size, contrast_norm=model.config.contrast_norm,
                           precision=model.config.precision)["perturbations"]
    perturbations = [{k: p[k] for k in ("family", "magnitude", "strength")} | p["test"] for p in perturbed]
    return {"threshold": model.threshold, "target_recall": model.info.get("target_recall"),
            "threshold_rule": model.info.get("threshold_rule"), "films": len(labels),
            "pneumonia_films": int(labels.sum()), "plain": plain, "perturbations": perturbations,
            **shift_summary(perturbations)}


def shift_summary(perturbations: list[dict]) -> dict:
    """The scores' mean over the bank, and the family whose perturbations leave the lowest mean specificity."""
    frame = pd.DataFrame(perturbations)
    by_family = frame.groupby("family")["specificity"].mean()
    worst = by_family.idxmin()
    return {"shifted": {k: float(frame[k].mean()) for k in SCORES},
            "worst": {"family": worst, "specificity": float(by_family[worst])}}


def score_run(folder: Path, pseudo_test: pd.DataFrame, out: Path) -> dict:
    """score_model of one experiment's final model with the seconds it took (decoding included: the benchmark's
    own cost beside the runs'), read back from scores/ when it was scored before."""
    from cxr.images import load_images

    saved = out / "scores" / f"{folder.name}.json"
    if saved.is_file():
        return json.loads(saved.read_text())
    started = time.monotonic()
    final = folder / "final"
    images = load_images(pseudo_test["path"], model_image_size(final), cache_dir())
    scores = score_model(final, images, pseudo_test["label"], pseudo_test["patient"])
    scores["score_s"] = round(time.monotonic() - started, 1)
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(scores, indent=1))
    return scores


def run_row(arm: str, seed: int, folder: Path, wall_s: float, scores: dict) -> dict:
    """One row of the table: what the search saw on val, and what its final model does on the pseudo-test."""
    from tune.results import load

    results = load(folder)
    plain, shifted = scores["plain"], scores["shifted"]
    return {"arm": arm, "seed": seed, "trials": len(results.trials), "wall_s": round(wall_s),
            "final_stage_s": round(results.metrics["final_stage_s"]),
            "image_size": results.best["config"].get("image_size"),
            "best_val_spec_at_recall": results.best["val"].get("val_spec_at_recall"),
            "best_val_shift_spec_at_recall": results.best["val"].get("val_shift_spec_at_recall"),
            "val_auroc": results.metrics["val"]["auroc"], "val_specificity": results.metrics["val"]["specificity"],
            "threshold": scores["threshold"], "auroc": plain["auroc"], "recall": plain["recall"],
            "specificity": plain["specificity"], "specificity_ci95": plain["specificity_ci95"],
            "shifted_auroc": shifted["auroc"], "shifted_recall": shifted["recall"],
            "shifted_specificity": shifted["specificity"], "worst_family": scores["worst"]["family"],
            "worst_specificity": scores["worst"]["specificity"], "score_s": scores["score_s"]}


def beats(arm: list[float], today: list[float]) -> bool:
    """Issue 30's rule for a default, on paired seeds: the arm is higher in every seed, or higher on average by more
    than the seeds' spread (the larger of the two arms' max - min)."""
    arm, today = np.asarray(arm, float), np.asarray(today, float)
    assert arm.shape == today.shape, "the rule compares the same seeds"
    spread = max(np.ptp(arm), np.ptp(today))
    return bool(np.all(arm > today) or arm.mean() - today.mean() > spread)


def summarise(runs: pd.DataFrame, column: str = "shifted_specificity") -> pd.DataFrame:
    """Per arm: the mean, min and max over seeds of the pseudo-test's scores; and whether it beats today by `column`."""
    columns = ["auroc", "specificity", "shifted_auroc", "shifted_specificity"]
    summary = runs.groupby("arm", sort=False)[columns].agg(["mean", "min", "max"])
    summary.columns = [f"{c}_{stat}" for c, stat in summary.columns]
    today = runs[runs["arm"] == BASELINE_ARM].set_index("seed")[column]
    summary["beats_today"] = [
        None if arm == BASELINE_ARM or today.empty else
        beats(rows.set_index("seed")[column].reindex(today.index), today)
        for arm, rows in runs.groupby("arm", sort=False)]
    return summary.reset_index()


def write_tables(runs: pd.DataFrame, summary: pd.DataFrame, out: Path, header: str) -> str:
    """runs.csv, summary.csv and shift.md (both tables under header); returns the markdown."""
    runs.to_csv(out / "runs.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    text = "\n\n".join([header, markdown_table(rounded(runs)), markdown_table(rounded(summary))]) + "\n"
    (out / "shift.md").write_text(text)
    return text


def rounded(frame: pd.DataFrame) -> list[dict]:
    """Rows with floats at 4 decimals (an interval's ends at 3), for the markdown tables."""
    def cell(value):
        if isinstance(value, float):
            return f"{value:.4f}"
        if isinstance(value, list):
            return "-".join(f"{v:.3f}" for v in value)
        return value

    return [{k: cell(v) for k, v in row.items()} for row in frame.to_dict("records")]


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """(this script's options, the tune.run flags after `--`)."""
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="Kaggle layout (train/{NORMAL,PNEUMONIA})")
    p.add_argument("--weights-dir", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--out", type=Path, default=OUT / "shift")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="tune.run --seed of each repeat")
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    p.add_argument("--time-budget", default="8m", help="tune.run --time-budget of every run")
    p.add_argument("--fraction", type=float, default=0.2, help="share of the non-pseudo-test patients searched on")
    p.add_argument("--test-share", type=float, default=0.1, help="share of all patients held out as the pseudo-test")
    args = p.parse_args(argv)
    # tune.run runs in the repository: the paths it is given must not depend on where this script was started
    args.data_dir, args.weights_dir, args.out = (path.resolve() for path in (args.data_dir, args.weights_dir, args.out))
    return args, extra


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, extra = parse_args(argv)
    started = time.monotonic()
    print(f"command: python benchmarks/bench_shift.py {' '.join(argv)}", flush=True)
    check_banks_disjoint()
    claim_out(args.out, {"data_dir": str(args.data_dir), "test_share": args.test_share, "fraction": args.fraction})
    manifest, pseudo_test = make_manifests(args.data_dir, args.test_share, args.fraction, args.out)
    searched = pd.read_csv(manifest)
    print(f"search: {len(searched):,} films of {searched['patient'].nunique():,} patients; pseudo-test: "
          f"{len(pseudo_test):,} films ({int(pseudo_test['label'].sum()):,} pneumonia) of "
          f"{pseudo_test['patient'].nunique():,} patients", flush=True)
    rows = []
    for seed in args.seeds:  # seeds outside, arms inside: a stopped benchmark has every arm of its first seeds
        for arm in args.arms:
            command = arm_command(arm, seed, manifest, args.time_budget, args.weights_dir, args.out / "results", extra)
            wall = run_arm(command, args.out)
            folder = args.out / "results" / run_name(arm, seed)
            rows.append(run_row(arm, seed, folder, wall, score_run(folder, pseudo_test, args.out)))
            print(rows[-1], flush=True)
    runs = pd.DataFrame(rows)
    header = (f"command: python benchmarks/bench_shift.py {' '.join(argv)}\n\nmachine: {machine()}; "
              f"{time.monotonic() - started:.0f} s in all")
    print(write_tables(runs, summarise(runs), args.out, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
