"""How much training throughput does a trial lose under Ray Tune, against cxr.engine.fit called directly?

Same TrainConfig, same data (whole patients of the real kermany224 train split, re-split by patient as the product
does, about --train-images / --val-images films), same 2 CPUs, one script:

  direct: fit(config, data, on_epoch_end=...) in this process, collecting train_images_per_s per epoch.
  tune:   a ray.tune.Tuner over tune.trainable.train_trial bound with ray_tune.with_parameters and
          with_resources({"cpu": cpus}) as tune.search.run_search binds it (see product_trainable), with the
          product's per-epoch report + checkpoint -- 1 sample, FIFO; train_images_per_s from metrics_dataframe.

train_images_per_s is measured by the engine around the training pass only (validation, reporting and
checkpointing excluded), so the whole-trial wall time is reported as well.

    CXR_CACHE_DIR=benchmarks/out/cache python benchmarks/bench_tune_overhead.py [--backbone resnet18] [--train-images 1024]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from common import DEFAULT_DATA, DEFAULT_WEIGHTS, OUT, cache_dir, patient_subset
from cpuload import ForeignLoad, wait_for_quiet


def subset(data, n_train: int, n_val: int, seed: int):
    """About n_train train and n_val val films of the product's split, whole patients (a patient_subset of each)."""
    import numpy as np

    from cxr.dataset import CxrData

    manifest = data.manifest.reset_index(drop=True)  # row i is images[i]
    kept = []
    for split, n in (("train", n_train), ("val", n_val)):
        rows = manifest[manifest["split"] == split]
        kept.append(patient_subset(rows, min(1.0, n / len(rows)), seed).index)
    keep = np.sort(np.concatenate(kept))
    return CxrData(np.ascontiguousarray(data.images[keep]), manifest.iloc[keep].reset_index(drop=True))


def run_direct(config, data, weights_dir) -> dict:
    import torch

    from cxr.engine import fit
    from cxr.models import pretrained_state

    epochs = []
    weights = pretrained_state(config.backbone, weights_dir) if config.pretrained else None
    t = time.perf_counter()
    fit(config, data, lambda epoch, metrics, _save: epochs.append(metrics), backbone_state=weights)
    return {"wall_s": time.perf_counter() - t, "ips": [m["train_images_per_s"] for m in epochs],
            "epoch_s": [m["epoch_time_s"] for m in epochs], "threads": torch.get_num_threads()}


def product_trainable(config, data, weights_dir, cpus: float, storage: Path):
    """tune.trainable.train_trial bound to its parameters the way tune.search.run_search binds it, with the data
    and weights put in the object store by tune.cluster.share / share_weights as the product does."""
    from ray import tune as ray_tune

    from cxr.models import pretrained_state
    from tune import cluster
    from tune.trainable import TrialContext, train_trial

    weights = {config.backbone: pretrained_state(config.backbone, weights_dir)} if config.pretrained else {}
    context = TrialContext(cluster.share(data), cluster.share_weights(weights), workers=1, cpus=float(cpus), gpus=0.0,
                           storage_path=str(storage.resolve()))
    return ray_tune.with_resources(ray_tune.with_parameters(train_trial, context=context), {"cpu": cpus, "gpu": 0})


def run_tune(config, data, weights_dir, cpus: float, storage: Path) -> dict:
    from ray import tune as ray_tune
    from ray.tune.schedulers import FIFOScheduler

    trainable = product_trainable(config, data, weights_dir, cpus, storage)
    tuner = ray_tune.Tuner(
        trainable,
        param_space=config.to_dict(),
        tune_config=ray_tune.TuneConfig(num_samples=1, scheduler=FIFOScheduler()),
        run_config=ray_tune.RunConfig(name="tune", storage_path=str(storage.resolve()),
                                      checkpoint_config=ray_tune.CheckpointConfig(num_to_keep=1),
                                      failure_config=ray_tune.FailureConfig(max_failures=0), verbose=0),
    )
    t = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - t
    result = grid[0]
    if result.error is not None:
        raise RuntimeError(f"the Tune trial failed: {result.error}")
    df = result.metrics_dataframe
    return {"wall_s": wall, "ips": df["train_images_per_s"].tolist(), "epoch_s": df["epoch_time_s"].tolist(),
            "trial_s": float(df["time_total_s"].iloc[-1])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(DEFAULT_DATA))
    p.add_argument("--weights-dir", default=str(DEFAULT_WEIGHTS), help="used when --pretrained")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--pretrained", action="store_true", help="ImageNet weights from --weights-dir (e.g. tf_efficientnet_lite0)")
    p.add_argument("--unfrozen-blocks", type=int, default=None, help="default: every block trains")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-images", type=int, default=1024, help="about this many train films, whole patients (0: all)")
    p.add_argument("--val-images", type=int, default=256, help="about this many val films, whole patients (0: all)")
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--quiet-wait", type=float, default=120.0,
                   help="before each run, wait up to this many seconds for other processes to leave the CPUs idle")
    p.add_argument("--order", default="direct,tune,tune,direct", help="order of the runs (ABBA cancels slow drifts in load)")
    args = p.parse_args(argv)

    import ray

    from cxr.config import TrainConfig
    from cxr.dataset import load_dataset

    full = load_dataset(args.data_dir, image_size=args.image_size, cache_dir=cache_dir())
    n_train = args.train_images or len(full.indices("train"))
    n_val = args.val_images or len(full.indices("val"))
    data = subset(full, n_train, n_val, seed=0)
    config = TrainConfig(backbone=args.backbone, pretrained=args.pretrained, unfrozen_blocks=args.unfrozen_blocks,
                         lr=1e-3, scheduler="cosine", batch_size=args.batch_size, image_size=args.image_size,
                         epochs=args.epochs, augment=0.3, early_stopping_patience=0, monitor="val_spec_at_recall")
    weights_dir = str(Path(args.weights_dir).resolve()) if args.pretrained else None
    print(f"data: {len(data.indices('train'))} train / {len(data.indices('val'))} val images at {args.image_size} px; "
          f"config: {config.backbone} pretrained={config.pretrained} unfrozen_blocks={config.unfrozen_blocks} "
          f"batch {config.batch_size} epochs {config.epochs}; cpus {args.cpus}", flush=True)

    storage = OUT / "tune_overhead" / time.strftime("%Y%m%d-%H%M%S")
    storage.mkdir(parents=True, exist_ok=True)
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, logging_level="WARNING")
    runs: dict[str, list[dict]] = {"direct": [], "tune": []}
    try:
        for i, kind in enumerate(args.order.split(",")):
            before = wait_for_quiet(args.quiet_wait) if args.quiet_wait > 0 else float("nan")
            print(f"\n[{kind}] run {i + 1} ... (other processes used {before:.2f} cores just before)", flush=True)
            with ForeignLoad() as load:
                if kind == "direct":
                    r = run_direct(config, data, weights_dir)
                else:
                    r = run_tune(config, data, weights_dir, args.cpus, storage / f"run{i + 1}")
            r["foreign_cores"] = load.cores
            runs[kind].append(r)
            print(f"[{kind}] images/s per epoch {[round(v, 1) for v in r['ips']]}  epoch s {[round(v, 1) for v in r['epoch_s']]}  "
                  f"wall {r['wall_s']:.1f} s" + (f"  (trial's own time_total_s {r['trial_s']:.1f} s)" if "trial_s" in r else "")
                  + (f"  torch threads {r['threads']}" if "threads" in r else "")
                  + f"  other processes used {r['foreign_cores']:.2f} of {os.cpu_count()} cores", flush=True)
    finally:
        ray.shutdown()

    if not runs["direct"] or not runs["tune"]:
        print("\nno ratio: --order must hold both direct and tune")
        return 0

    def mean_ips(kind: str, skip_first: bool) -> float:
        return statistics.mean(v for r in runs[kind] for v in (r["ips"][1:] if skip_first and len(r["ips"]) > 1 else r["ips"]))

    print("\nsummary (means over runs and epochs; best = the fastest epoch of each path, the least disturbed):")
    for skip in (False, True):
        label = "epochs 2.." if skip else "all epochs"
        d, t = mean_ips("direct", skip), mean_ips("tune", skip)
        print(f"  {label:10s}: direct {d:.1f} img/s  tune {t:.1f} img/s  ratio tune/direct {t / d:.3f} "
              f"(target >= 0.9: {'met' if t / d >= 0.9 else 'NOT met'})")
    bd = max(v for r in runs["direct"] for v in r["ips"][1:] or r["ips"])
    bt = max(v for r in runs["tune"] for v in r["ips"][1:] or r["ips"])
    print(f"  best epoch 2..: direct {bd:.1f} img/s  tune {bt:.1f} img/s  ratio tune/direct {bt / bd:.3f}")
    print(f"  other processes' CPU use during the runs (cores): "
          f"direct {[round(r['foreign_cores'], 2) for r in runs['direct']]}  tune {[round(r['foreign_cores'], 2) for r in runs['tune']]}")
    dw = statistics.mean(r["wall_s"] for r in runs["direct"])
    tw = statistics.mean(r["wall_s"] for r in runs["tune"])
    ts = statistics.mean(r["trial_s"] for r in runs["tune"])
    print(f"  whole trial: direct fit() {dw:.1f} s; Tuner.fit() {tw:.1f} s (ratio direct/tune {dw / tw:.3f}); "
          f"trial's own time_total_s {ts:.1f} s (ratio direct/trial {dw / ts:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
