"""What do final members trained in parallel cost in wall time against one retrain, and does their ensemble beat them?

On real data: K = 2 members trained in parallel (1 CPU each, as tune.final_stage launches them) against a single
retrain (K = 1 on one trial's resources, one CPU), and member vs ensemble val AUROC.

Same config, data and machine in one run: a patient-grouped share of the kermany224 train split (re-split by
patient; it has no test split), EfficientNet-Lite0 with the shared ImageNet weights at 128 px. Both arms run the
product's own Ray task (tune.trainable.member_task) on a private local cluster of 2 CPUs.

    CXR_CACHE_DIR=benchmarks/out/cache python benchmarks/bench_final_stage.py [--subset 0.25] [--epochs 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import DEFAULT_DATA, DEFAULT_WEIGHTS, subset_folder

CONFIG = {"backbone": "tf_efficientnet_lite0", "pretrained": True, "image_size": 128, "batch_size": 64, "lr": 1e-3,
          "scheduler": "cosine", "dropout": 0.2, "unfrozen_blocks": 4, "augment": 0.3, "early_stopping_patience": 0,
          "monitor": "val_spec_at_recall"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--weights-dir", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--subset", type=float, default=0.25)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    import ray

    from cxr.config import TrainConfig
    from cxr.dataset import load_dataset
    from cxr.ensemble import assemble, member_seeds
    from cxr.models import pretrained_state
    from tune import cluster
    from tune.trainable import member_task

    config = TrainConfig.from_dict({**CONFIG, "epochs": args.epochs})
    data = load_dataset(subset_folder(args.data_dir, args.subset), image_size=config.image_size)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    data_ref = cluster.share(data)
    weights = cluster.share_weights({config.backbone: pretrained_state(config.backbone, args.weights_dir)})
    seeds = member_seeds(0, 3, taken={0})
    task = member_task.options(num_cpus=1)
    timings, members = {}, {}
    for name, arm in (("single retrain (K=1, 1 CPU)", seeds[:1]), ("K=2 members in parallel (1 CPU each)", seeds[1:])):
        start = time.perf_counter()
        members[name] = ray.get([task.remote(config.replace(seed=s), data_ref, weights) for s in arm])
        timings[name] = time.perf_counter() - start
    ray.shutdown()
    single, parallel = timings
    _, metrics, _, _ = assemble(config, members[parallel], data, n_boot=200)
    n_train, n_val = len(data.indices("train")), len(data.indices("val"))
    print(f"data: {n_train} train / {n_val} val images ({args.subset:g} of the patients), {config.backbone} "
          f"{config.image_size} px, {config.epochs} epochs, ImageNet weights")
    print("| arm | wall s | members | members per hour |\n|---|---|---|---|")
    for name, seconds in timings.items():
        print(f"| {name} | {seconds:.1f} | {len(members[name])} | {3600 * len(members[name]) / seconds:.1f} |")
    print(f"wall time ratio (K=2 parallel / single retrain): {timings[parallel] / timings[single]:.2f}; "
          f"members per unit time: {2 * timings[single] / timings[parallel]:.2f}x")
    aurocs = [m["chosen"]["auroc"] for m in metrics["members"]]
    print(f"val AUROC: members {', '.join(f'{a:.4f}' for a in aurocs)}; ensemble {metrics['ensemble']['chosen']['auroc']:.4f} "
          f"(mirroring {'used' if metrics['tta']['used'] else 'not used'})")


if __name__ == "__main__":
    main()
