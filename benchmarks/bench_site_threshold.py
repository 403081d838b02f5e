"""A site's operating point on real films: does the threshold each rule fits on a site's calibration set reach the
target recall (0.98) on the site's next films, at calibration sets of 100, 200, 400 and about 775 pneumonia films
(775: about val's size in the product)?

1. ../shared/data/kermany224/train is scanned (patients from file names) and split by patient: a training pool
   (45 % of the patients: 2,360 films, 1,888 train / 472 val) and a pseudo-site (the other 55 %: 2,856 films, 2,105
   pneumonia, 1,565 patients; seed 0). Nothing of the pseudo-site is seen in training or model selection.
2. One model is trained on the pool (`cxr.engine.fit`, train/val split of the pool by patient): EfficientNet-Lite0
   with the ImageNet weights of ../shared/weights, 128 px, 2 epochs, the best trial's settings of the real-data
   search (BENCHMARKS.md), torch on one thread (the run occupies one core). Its raw (uncalibrated, unmirrored)
   probabilities of every pseudo-site film go to benchmarks/out/site-threshold/scores.parquet; a later run reads
   them back instead of training (--fresh trains again).
3. For each size and --sets seeded draws, a calibration set of whole pseudo-site patients in random order until it
   holds the size's pneumonia films, with whole normal patients in the site's own proportion. Each rule of
   `cxr.evaluation.operating_point` (exact, bootstrap, point; recall confidence 0.95, the bootstrap at
   cxr.intervals.N_BOOT resamples and seed 0, as cxr.recalibrate calls it; without the point rule's interval, which
   does not move the threshold) fits temperature and threshold on the set; the threshold is applied to the
   temperature-scaled probability of every pseudo-site film outside the set. The rules see the same sets (paired).
4. Per rule and size: coverage (the share of sets whose recall there reaches 0.98), the 5th percentile of that
   recall, the median specificity. Below 149 pneumonia films cxr.recalibrate refuses the set (the exact bound cannot
   show 0.98): the 100 row says what a rule would do there, not what the product ships.

    CXR_CACHE_DIR=benchmarks/out/cache python benchmarks/bench_site_threshold.py [--sets 200] [--epochs 2] [--fresh]
    python benchmarks/bench_site_threshold.py --smoke   # synthetic films, tiny random model, in a temporary folder

Writes benchmarks/out/site-threshold/: scores.parquet (the pseudo-site's scores), training.json (how they were
made), sets.parquet (one row per calibration set and rule) and coverage.csv (the table's rows).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

from common import DEFAULT_DATA, DEFAULT_WEIGHTS, OUT, cache_dir, machine, patient_subset, print_markdown

FOLDER = OUT / "site-threshold"
RULES = ("exact", "bootstrap", "point")
SIZES = (100, 200, 400, 775)
SMOKE_SIZES = (20, 100)  # below 50 pneumonia films every rule is the lowest pneumonia score: 100 tells them apart
TARGET = 0.98
SITE_SHARE = 0.55  # of the patients: leaves the pseudo-site about 2,100 pneumonia films, 775 + 1,300 to score on
VAL_FRACTION = 0.2  # of the pool's patients, for the model's own validation
_SLACK = 1e-12  # a recall equal to the target up to float rounding reaches it (as cxr.intervals counts it)
# the best trial of the real-data search (BENCHMARKS.md, "Search on real data"): a reasonable model, not a tuned one
TRAIN = {"backbone": "tf_efficientnet_lite0", "pretrained": True, "image_size": 128, "batch_size": 64, "lr": 6.5e-4,
         "scheduler": "cosine", "dropout": 0.25, "unfrozen_blocks": 3, "augment": 0.5, "early_stopping_patience": 0}
SMOKE_TRAIN = {"backbone": "test_efficientnet", "pretrained": False, "image_size": 32, "batch_size": 32, "lr": 3e-3,
               "scheduler": "cosine", "early_stopping_patience": 0}


def one_core() -> None:
    """torch on one thread: the run must take one core of the shared machine (numpy's work here is single-threaded:
    sorting, cumulative sums, small matrix products)."""
    import torch

    torch.set_num_threads(1)
    with contextlib.suppress(RuntimeError):  # only settable before the first parallel work
        torch.set_num_interop_threads(1)


def split_patients(data_dir: Path, seed: int):
    """(pool with split train/val, pseudo-site): every film of a patient on one side."""
    from cxr.kaggle import scan
    from cxr.splits import holdout_by_patient

    frame = scan(data_dir, val_fraction=VAL_FRACTION, seed=seed)[["path", "label", "patient"]]
    site = frame.index.isin(patient_subset(frame, SITE_SHARE, seed + 300).index)
    pool = frame[~site].assign(split="train", source_split="train")
    pool.loc[holdout_by_patient(pool, VAL_FRACTION, seed), "split"] = "val"
    return pool.reset_index(drop=True), frame[site].reset_index(drop=True)


def site_scores(args):
    """path, label, patient, prob of every pseudo-site film: read back, or a model trained on the pool scores them."""
    import pandas as pd

    scores, meta = args.folder / "scores.parquet", args.folder / "training.json"
    if scores.is_file() and not args.fresh:
        made = json.loads(meta.read_text()) if meta.is_file() else ""
        print(f"scores: {scores} (read back; --fresh retrains): {made}")
        return pd.read_parquet(scores)
    from cxr.config import TrainConfig
    from cxr.dataset import CxrData
    from cxr.engine import fit, predict
    from cxr.images import load_images
    from cxr.models import pretrained_state

    pool, site = split_patients(args.data_dir, args.seed)
    config = TrainConfig(**args.train, epochs=args.epochs, seed=args.seed, target_recall=TARGET)
    size = config.image_size
    started = time.perf_counter()
    data = CxrData(load_images(pool["path"], size, args.cache, workers=1), pool)  # one process decodes: one core
    site_images = load_images(site["path"], size, args.cache, workers=1)
    decoded = time.perf_counter()
    state = pretrained_state(config.backbone, args.weights_dir) if config.pretrained else None
    result = fit(config, data, lambda epoch, m, _save: print(
        f"epoch {epoch}: val AUROC {m['val_auroc']:.4f}, {m['epoch_time_s']:.0f} s", flush=True), backbone_state=state)
    trained = time.perf_counter()
    site = site.assign(prob=predict(result.model, site_images, batch_size=config.batch_size, image_size=size,
                                     contrast_norm=config.contrast_norm))
    scored = time.perf_counter()
    info = {"config": config.to_dict(), "seed": args.seed, "pool_films": len(pool),
            "pool_train_films": int((pool["split"] == "train").sum()), "site_films": len(site),
            "site_pneumonia_films": int(site["label"].sum()), "best_epoch": result.best_epoch,
            "best_val_auroc": result.best_metrics.get("val_auroc"), "decode_s": round(decoded - started, 1),
            "train_s": round(trained - decoded, 1), "score_s": round(scored - trained, 1)}
    args.folder.mkdir(parents=True, exist_ok=True)
    site.to_parquet(scores.with_suffix(".tmp"), index=False)
    scores.with_suffix(".tmp").replace(scores)  # complete or absent: a stopped run trains again
    meta.write_text(json.dumps(info, indent=1))
    print(f"scores: {len(site):,} pseudo-site films scored: {info}", flush=True)
    return site


def draw_sets(site, sizes, sets: int, seed: int) -> dict[int, list]:
    """Per size, `sets` calibration sets (film indices of site): whole patients with pneumonia films in random order
    until the size's pneumonia films are in, then whole normal-only patients until the normal films reach the site's
    own ratio to the set's pneumonia films."""
    import numpy as np

    per_patient = site.groupby("patient")["label"].agg(pos="sum", films="size")
    per_patient["neg"] = per_patient["films"] - per_patient["pos"]
    sick, healthy = per_patient[per_patient["pos"] > 0], per_patient[per_patient["pos"] == 0]
    ratio = per_patient["neg"].sum() / per_patient["pos"].sum()
    rows = {p: idx for p, idx in site.groupby("patient").indices.items()}
    out = {}
    for size in sizes:
        if size >= sick["pos"].sum():
            raise SystemExit(f"the pseudo-site has {sick['pos'].sum()} pneumonia films: too few for sets of {size}")
        rng = np.random.default_rng([seed, size])
        out[size] = []
        for _ in range(sets):
            order = rng.permutation(len(sick))
            cum = np.cumsum(sick["pos"].to_numpy()[order])
            take = order[: np.searchsorted(cum, size) + 1]  # the patient that reaches the size is kept whole
            chosen = list(sick.index[take])
            normals = round(cum[len(take) - 1] * ratio) - int(sick["neg"].to_numpy()[take].sum())
            if normals > 0:
                order = rng.permutation(len(healthy))
                cum = np.cumsum(healthy["neg"].to_numpy()[order])
                chosen += list(healthy.index[order[: np.searchsorted(cum, normals) + 1]])
            out[size].append(np.sort(np.concatenate([rows[p] for p in chosen])))
    return out


def coverage_runs(site, sets: dict[int, list], n_boot: int):
    """One row per calibration set and rule: the rule fitted on the set as cxr.recalibrate fits it, scored on every
    other pseudo-site film."""
    import numpy as np
    import pandas as pd

    from cxr.calibration import apply_temperature
    from cxr.evaluation import operating_point
    from cxr.metrics import rates
    from cxr.recalibrate import CONFIDENCE

    labels, raw, patients = site["label"].to_numpy(), site["prob"].to_numpy(np.float64), site["patient"].to_numpy()
    rows = []
    for size, members in sets.items():
        for number, inside in enumerate(members):
            outside = np.ones(len(site), bool)
            outside[inside] = False
            for rule in RULES:
                point = operating_point(labels[inside], raw[inside], patients[inside], target_recall=TARGET, rule=rule,
                                        recall_confidence=CONFIDENCE, n_boot=n_boot, seed=0, interval=False)
                q = apply_temperature(raw[outside], point["temperature"])
                there = rates(labels[outside], q, point["threshold"])
                rows.append({"size": size, "set": number, "rule": rule, "pneumonia_in_set": int(labels[inside].sum()),
                             "normal_in_set": int((labels[inside] == 0).sum()), "temperature": point["temperature"],
                             "threshold": point["threshold"], "threshold_point": point["threshold_point"],
                             "recall": there["recall"], "specificity": there["specificity"],
                             "scored_films": int(outside.sum())})
    return pd.DataFrame(rows)


def summarise(runs):
    import numpy as np
    import pandas as pd

    out = []
    for (rule, size), group in runs.groupby(["rule", "size"], sort=False):
        out.append({"rule": rule, "size": size, "coverage": float(np.mean(group["recall"] >= TARGET - _SLACK)),
                    "recall_p5": float(np.percentile(group["recall"], 5)),
                    "median_specificity": float(group["specificity"].median()),
                    "median_threshold": float(group["threshold"].median()),
                    "mean_pneumonia_in_set": float(group["pneumonia_in_set"].mean()),
                    "mean_normal_in_set": float(group["normal_in_set"].mean()),
                    "mean_scored_films": float(group["scored_films"].mean()), "sets": len(group)})
    return pd.DataFrame(out)


def print_table(summary) -> None:
    from cxr.cli import DEFAULT_THRESHOLD_RULE as DEFAULT_RULE

    print()
    print_markdown([{"rule": r.rule, "pneumonia films": r.size,
                     "set (mean films)": f"{r.mean_pneumonia_in_set:.1f} pneumonia + {r.mean_normal_in_set:.1f} normal",
                     f"coverage of recall {TARGET}": f"{100 * r.coverage:.1f} %",
                     "5th-percentile recall": f"{r.recall_p5:.3f}", "median specificity": f"{r.median_specificity:.3f}",
                     "median threshold": f"{r.median_threshold:.3f}", "films scored": f"{r.mean_scored_films:,.0f}",
                     "sets": r.sets} for r in summary.itertuples()])
    print(f"\ncxr.recalibrate's default rule: {DEFAULT_RULE}; below 149 pneumonia films it refuses the set")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="Kaggle layout (train/{NORMAL,PNEUMONIA})")
    p.add_argument("--weights-dir", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="pneumonia films per calibration set")
    p.add_argument("--sets", type=int, default=200, help="calibration sets per size (the same for every rule)")
    p.add_argument("--n-boot", type=int, default=None, help="the bootstrap rule's resamples (default: "
                   "cxr.intervals.N_BOOT, as cxr.recalibrate)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="of the patient split, the training and the sets")
    p.add_argument("--fresh", action="store_true", help="train and score again even when scores.parquet exists")
    p.add_argument("--smoke", action="store_true", help="synthetic films, a tiny random model, sizes "
                   f"{SMOKE_SIZES}, 20 sets, in a temporary folder")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    one_core()
    print(f"command: python benchmarks/bench_site_threshold.py {' '.join(sys.argv[1:] if argv is None else argv)}",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="site-threshold-") if args.smoke else contextlib.nullcontext() as tmp:
        args.train, args.folder, args.cache = TRAIN, FOLDER, cache_dir()
        if args.smoke:
            from cxr.synthetic import create_synthetic

            args.data_dir = create_synthetic(Path(tmp) / "data", n_patients=400, size=48, seed=args.seed)
            args.train, args.folder, args.cache = SMOKE_TRAIN, Path(tmp), Path(tmp) / "cache"
            args.sizes, args.sets, args.epochs, args.n_boot = list(SMOKE_SIZES), 20, 1, args.n_boot or 100
        from cxr.intervals import N_BOOT

        n_boot = args.n_boot or N_BOOT
        site = site_scores(args)
        print(f"pseudo-site: {len(site):,} films, {int(site['label'].sum()):,} pneumonia, "
              f"{site['patient'].nunique():,} patients", flush=True)
        fitting = time.perf_counter()
        runs = coverage_runs(site, draw_sets(site, args.sizes, args.sets, args.seed), n_boot)
        summary = summarise(runs)
        runs.to_parquet(args.folder / "sets.parquet", index=False)
        summary.to_csv(args.folder / "coverage.csv", index=False)

        print(f"\nmachine: {machine()}; torch on 1 thread; {time.perf_counter() - started:.0f} s in all, "
              f"{time.perf_counter() - fitting:.0f} s of it fitting the rules ({n_boot} bootstrap resamples); "
              f"rows in {args.folder / 'coverage.csv'}")
        print_table(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
