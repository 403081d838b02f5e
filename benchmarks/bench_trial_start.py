"""How much sooner does a trial start with its data from Ray's object store than decoding the films from disk itself?

Trial start = from the first line of the trial's Ray task to its first training batch being ready
(uint8 films -> augmented, normalised float batch through cxr.augment.BatchPipeline, as cxr.engine does).

  store: the driver decodes once (load_dataset, cached), ray.put()s CxrData.for_object_store(); the task gets the
         ref (wrapped in a list so Ray does not resolve it before the task starts) and ray.get()s it inside.
  disk:  the task calls cxr.dataset.load_dataset(root, image_size=..., cache_dir=<fresh empty temp dir>),
         i.e. scans the folder and decodes every JPEG itself, then builds the first batch.

Both tasks get num_cpus=2 in ray.init(address="local", num_cpus=2); a warm-up task imports torch/kornia in
the worker first, so process start-up and imports are outside both measurements. The driver also reports
the end-to-end time (submit -> result back) and the one-time driver decode + ray.put cost of the store path.

    CXR_CACHE_DIR=benchmarks/out/cache python benchmarks/bench_trial_start.py [--image-size 224] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

from common import DEFAULT_DATA, OUT, cache_dir
from cpuload import ForeignLoad, wait_for_quiet

# timm's default (ImageNet) normalisation; the backbone does not matter for the first batch's cost
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def first_batch(data, image_size: int, batch_size: int, augment: float, seed: int = 0):
    """The engine's first training batch: shuffled train indices, sorted batch, BatchPipeline(train=True)."""
    import numpy as np
    import torch

    from cxr.augment import BatchPipeline

    torch.manual_seed(seed)
    pipeline = BatchPipeline(image_size, MEAN, STD, augment, True, contrast_norm="none")
    idx = data.indices("train")
    idx = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed)).numpy()]
    batch = np.sort(idx[:batch_size])
    x = pipeline(torch.from_numpy(data.images[batch]), train=True)
    y = torch.from_numpy(data.labels[batch]).float()
    return x, y


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(DEFAULT_DATA), help="Kaggle-layout root with train/{NORMAL,PNEUMONIA}")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--augment", type=float, default=0.5)
    p.add_argument("--reps", type=int, default=3, help="repetitions of each path (interleaved)")
    p.add_argument("--cpus", type=int, default=2, help="num_cpus of the local Ray node and of each task")
    p.add_argument("--quiet-wait", type=float, default=60.0,
                   help="before each measurement, wait up to this many seconds for other processes to leave the CPUs idle")
    args = p.parse_args(argv)

    import ray
    import torch

    from cxr.dataset import load_dataset

    cache = cache_dir()
    tmp_root = OUT / "trial_start"
    tmp_root.mkdir(parents=True, exist_ok=True)
    print(f"data {args.data_dir}  image_size {args.image_size}  batch {args.batch_size}  augment {args.augment}  "
          f"driver cache {cache}  cpus {args.cpus}  torch threads {torch.get_num_threads()}")

    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, logging_level="WARNING")
    try:
        # --- driver side of the store path: decode once (or read the cache), copy into RAM, put ---
        t = time.perf_counter()
        data = load_dataset(args.data_dir, image_size=args.image_size, cache_dir=cache)
        t_load = time.perf_counter() - t
        t = time.perf_counter()
        in_mem = data.for_object_store()
        t_copy = time.perf_counter() - t
        t = time.perf_counter()
        ref = ray.put(in_mem)
        t_put = time.perf_counter() - t
        n_train = len(data.indices("train"))
        print(f"driver: load_dataset {t_load:.2f} s (from the cache if it already existed), view {t_copy:.2f} s, "
              f"ray.put {t_put:.2f} s; {len(data.manifest)} images ({n_train} train), {in_mem.images.nbytes / 2**20:.0f} MiB")

        @ray.remote(num_cpus=args.cpus, max_retries=0)
        def warmup() -> dict:
            import kornia  # noqa: F401  the imports both paths need, outside the timings
            import torch

            import cxr.augment  # noqa: F401
            import cxr.dataset  # noqa: F401

            return {"pid": os.getpid(), "threads": torch.get_num_threads()}

        @ray.remote(num_cpus=args.cpus, max_retries=0)
        def from_store(refs: list) -> dict:
            t0 = time.perf_counter()
            d = ray.get(refs[0])
            t_get = time.perf_counter() - t0
            x, _ = first_batch(d, args.image_size, args.batch_size, args.augment)
            return {"pid": os.getpid(), "fetch_s": t_get, "start_s": time.perf_counter() - t0, "shape": tuple(x.shape)}

        @ray.remote(num_cpus=args.cpus, max_retries=0)
        def from_disk(root: str, cache_dir: str) -> dict:
            t0 = time.perf_counter()
            d = load_dataset(root, image_size=args.image_size, cache_dir=cache_dir)
            t_load = time.perf_counter() - t0
            x, _ = first_batch(d, args.image_size, args.batch_size, args.augment)
            return {"pid": os.getpid(), "fetch_s": t_load, "start_s": time.perf_counter() - t0, "shape": tuple(x.shape)}

        print("warm-up task:", ray.get(warmup.remote()))
        rows = {"store": [], "disk": []}
        for rep in range(args.reps):
            for path in ("store", "disk"):
                fresh = tempfile.mkdtemp(prefix=f"cache-{rep}-", dir=tmp_root)
                if args.quiet_wait > 0:
                    wait_for_quiet(args.quiet_wait)
                with ForeignLoad() as load:
                    t = time.perf_counter()
                    if path == "store":
                        r = ray.get(from_store.remote([ref]))
                    else:
                        r = ray.get(from_disk.remote(str(args.data_dir), fresh))
                    r["e2e_s"] = time.perf_counter() - t
                r["foreign"] = load.cores
                shutil.rmtree(fresh, ignore_errors=True)
                rows[path].append(r)
                print(f"rep {rep + 1} {path:5s}: in task {r['start_s']:.3f} s (data {r['fetch_s']:.3f} s, "
                      f"first batch {r['start_s'] - r['fetch_s']:.3f} s)  end-to-end {r['e2e_s']:.3f} s  "
                      f"pid {r['pid']}  batch {r['shape']}  other processes {r['foreign']:.2f} cores", flush=True)
    finally:
        ray.shutdown()

    med = {k: {m: statistics.median(r[m] for r in v) for m in ("start_s", "e2e_s", "fetch_s")} for k, v in rows.items()}
    ratio = med["store"]["start_s"] / med["disk"]["start_s"]
    ratio_e2e = med["store"]["e2e_s"] / med["disk"]["e2e_s"]
    print("\nmedian over", args.reps, "reps:")
    for k in ("disk", "store"):
        print(f"  {k:5s}: trial start (task start -> first batch) {med[k]['start_s']:.3f} s  "
              f"(data {med[k]['fetch_s']:.3f} s)  end-to-end seen by the driver {med[k]['e2e_s']:.3f} s")
    print(f"ratio store/disk, in task: {ratio:.4f} (1/{1 / ratio:.0f}); target <= 0.2: {'met' if ratio <= 0.2 else 'NOT met'}")
    print(f"ratio store/disk, end-to-end: {ratio_e2e:.4f} (1/{1 / ratio_e2e:.0f})")
    print(f"one-time driver cost of the store path: load {t_load:.2f} s + view {t_copy:.2f} s + put {t_put:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
