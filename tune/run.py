"""python -m tune.run: Optuna search under Ray Tune, best-trial retrain, recall-focused test evaluation.

The CLI parses and delegates: flags become plain values for tune.experiment, which drives cxr and Ray.
"""

from __future__ import annotations

import argparse
import sys

from cxr.config import MONITORS
from cxr.errors import InputError

# imported only once the flags parsed (--help answers at once): tune.flags (pandas), then, once the flags are
# checked, tune.experiment (torch, Ray, Optuna), so bad flags also answer in about a second


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tune.run", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--space", default="smoke", help="search space: a name in search_spaces/ or a path to a .py file defining space(trial)")
    p.add_argument("--backbones", help="comma-separated subset of the space's backbones to search (only these need weights)")
    data = p.add_mutually_exclusive_group()
    data.add_argument("--data-dir", help="Kaggle chest_xray folder (<dir>/{train,val,test}/{NORMAL,PNEUMONIA}, JPEG/PNG/DICOM) or a CSV/parquet manifest (path, label[, patient, split])")
    data.add_argument("--dataset", choices=["synthetic"], help="use a generated CXR-like data set (made once in the cache folder)")
    p.add_argument("--num-samples", type=int, default=8, help="number of trials")
    p.add_argument("--max-epochs", type=int, help="epoch budget per trial (ASHA's max_t); default: the space's epochs")
    p.add_argument("--image-size", type=int, help="override the space's image size (e.g. small for a CPU check)")
    p.add_argument("--metric", default="val_spec_at_recall", choices=[m for m in MONITORS if m != "val_loss"],
                   help="trial score to maximise; val_spec_at_recall = val specificity at the threshold reaching --target-recall")
    p.add_argument("--target-recall", type=float, default=0.98, help="pneumonia recall the decision threshold must reach on val")
    p.add_argument("--scheduler", choices=["asha", "fifo"], default="asha", help="asha stops weak trials early; fifo runs all to the end")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs reserved per trial")
    p.add_argument("--gpus-per-trial", type=float, default=0.0, help="GPUs per trial; fractions pack trials on one GPU (0.25 = four per GPU)")
    p.add_argument("--workers-per-trial", type=int, default=1,
                   help="data-parallel processes per trial (Ray Train, NCCL on GPUs, gloo on CPU); --cpus/--gpus-per-trial are then per worker")
    p.add_argument("--max-concurrent", type=int, default=0, help="trials running at once (0: as many as resources allow)")
    p.add_argument("--results-dir", default="results", help="experiment folders are created here")
    p.add_argument("--name", help="experiment name (default: <space>-<timestamp>); an existing name needs --resume")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler, the train/val split and training")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of train patients held out for validation")
    p.add_argument("--weights-dir", help="folder of <backbone>.safetensors files used instead of the timm hub")
    p.add_argument("--no-pretrained", action="store_true", help="train from random initialisation")
    p.add_argument("--cache-dir", help="decoded-image cache (default: $CXR_CACHE_DIR or ~/.cache/cxr)")
    p.add_argument("--address", help="join an existing Ray cluster (e.g. auto or ray://host:10001); default: start a local one")
    p.add_argument("--storage-path", help="where Ray Tune keeps trials and checkpoints (local path, NFS, s3://, gs://); default: the experiment folder")
    p.add_argument("--resume", action="store_true", help="continue the interrupted experiment --name with its saved settings")
    p.add_argument("--final-seeds", type=int, default=3, metavar="K",
                   help="ensemble members of the best config trained with new seeds (in parallel) for the final model")
    p.add_argument("--final-epochs", type=int, metavar="N", help="epochs of each final member (default: the best config's)")
    p.add_argument("--recall-confidence", type=float, metavar="C",
                   help="choose the highest threshold whose one-sided C lower bound of val recall (patient bootstrap) reaches --target-recall (e.g. 0.95); default: the point estimate")
    p.add_argument("--extend", type=int, default=0, metavar="N",
                   help="add N trials to the finished experiment --name; the sampler sees every earlier trial")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from tune.flags import Experiment, resolve

        experiment = resolve(Experiment(
            space=args.space, backbones=args.backbones, data_dir=args.data_dir, dataset=args.dataset, num_samples=args.num_samples,
            max_epochs=args.max_epochs, image_size=args.image_size, metric=args.metric,
            target_recall=args.target_recall, scheduler=args.scheduler, cpus_per_trial=args.cpus_per_trial,
            gpus_per_trial=args.gpus_per_trial, workers_per_trial=args.workers_per_trial, max_concurrent=args.max_concurrent, results_dir=args.results_dir,
            name=args.name, seed=args.seed, val_fraction=args.val_fraction, weights_dir=args.weights_dir,
            pretrained=not args.no_pretrained, cache_dir=args.cache_dir, address=args.address,
            storage_path=args.storage_path, final_seeds=args.final_seeds, final_epochs=args.final_epochs,
            recall_confidence=args.recall_confidence,
        ), args.resume, args.extend)
        from tune.experiment import run_experiment

        return run_experiment(experiment, resume=args.resume, extend=args.extend)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
