"""How many more training images a second do cxr's decode-once cache and batch augmentation deliver than torchvision?

Both sides deliver what a training step consumes: shuffled batches of 32 augmented, normalised
(32, 3, size, size) float tensors of the same images on the same CPU.

- cache:       cxr.images.load_images (memory-mapped uint8 cache, measured warm: second load) and, per batch,
               cxr.augment.BatchPipeline(size, mean, std, strength, hflip=True) over random index batches,
               exactly as cxr.engine._Run._train_pass does (same _batches helper). The one-time cold build
               of the cache is timed separately.
- torchvision: ImageFolder + PIL transforms of equivalent strength, DataLoader(num_workers=2,
               batch_size=32, shuffle=True, persistent_workers=False): decodes every JPEG every epoch.

    python benchmarks/bench_loader.py --size 224 --batches 60
    python benchmarks/bench_loader.py --size 224 --batches 60 --no-augment
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from common import DEFAULT_DATA, cache_dir


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA / "train",
                        help="ImageFolder root with NORMAL/ and PNEUMONIA/ (default: ../shared/data/kermany224/train)")
    parser.add_argument("--size", type=int, default=224, help="square training size in pixels (default 224)")
    parser.add_argument("--batches", type=int, default=60, help="batches timed per side, after the warm-up")
    parser.add_argument("--warmup", type=int, default=5, help="batches run untimed first on each side")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the torchvision side")
    parser.add_argument("--strength", type=float, default=0.5, help="cxr augmentation strength (default 0.5)")
    parser.add_argument("--no-augment", action="store_true",
                        help="strength 0 vs. Resize+ToTensor+Normalize: isolates the decode cost")
    parser.add_argument("--cache-dir", type=Path, default=cache_dir(),
                        help="cxr cache folder (default $CXR_CACHE_DIR, else benchmarks/out/cache, git-ignored)")
    parser.add_argument("--keep-cache", action="store_true",
                        help="reuse an existing cache entry instead of timing a cold build")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    return parser.parse_args()


def bench_cache(args, paths: list[str], mean, std) -> dict:
    import numpy as np
    import torch

    from cxr.augment import BatchPipeline
    from cxr.engine import _batches
    from cxr.images import _cache_key, load_images

    args.cache_dir.mkdir(parents=True, exist_ok=True)
    entry = args.cache_dir / f"images-{_cache_key(paths, args.size)}-{args.size}px.npy"
    if entry.exists() and not args.keep_cache:
        entry.unlink()  # this exact entry only: it is rebuilt identically below
    cold = entry.exists()
    start = time.perf_counter()
    load_images(paths, args.size, args.cache_dir)  # cold: decode every file once into the cache
    build_s = None if cold else time.perf_counter() - start

    start = time.perf_counter()
    images = load_images(paths, args.size, args.cache_dir)  # warm: what every later trial does
    warm_open_s = time.perf_counter() - start

    strength = 0.0 if args.no_augment else args.strength
    pipeline = BatchPipeline(args.size, mean, std, strength, hflip=True, contrast_norm="none")
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    index = np.arange(len(paths))

    def batches():
        while True:
            yield from _batches(index, args.batch_size, generator)

    stream = batches()
    for _ in range(args.warmup):
        pipeline(torch.from_numpy(images[next(stream)]), train=True)
    seen, start = 0, time.perf_counter()
    for _ in range(args.batches):
        batch = next(stream)
        x = pipeline(torch.from_numpy(images[batch]), train=True)
        seen += x.shape[0]
    elapsed = time.perf_counter() - start
    assert x.shape[1:] == (3, args.size, args.size) and x.dtype == torch.float32
    return {"images_per_s": seen / elapsed, "seconds": elapsed, "images": seen,
            "cold_build_s": build_s, "warm_open_s": warm_open_s, "strength": strength}


def bench_torchvision(args, mean, std) -> dict:
    import torch
    from torchvision import datasets
    from torchvision import transforms as T

    size = args.size
    if args.no_augment:
        steps = [T.Resize((size, size))]
    else:
        # the same ranges as cxr's strength 0.5: zoom 1-1.2x (crop 69-100 % of the area, square), rotation
        # +-10 degrees, horizontal flip, brightness and contrast +-10 %
        steps = [
            T.RandomResizedCrop(size, scale=(1 / 1.2**2, 1.0), ratio=(1.0, 1.0)),
            T.RandomRotation(10),
            T.RandomHorizontalFlip(),
            T.ColorJitter(brightness=0.1, contrast=0.1),
        ]
    # the JPEGs are RGB with three equal channels, so no Grayscale(3) step is needed (it would only add cost)
    transform = T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])
    dataset = datasets.ImageFolder(str(args.data), transform=transform)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers, persistent_workers=False
    )

    def batches():
        while True:  # a new epoch restarts the workers (persistent_workers=False), as training would
            yield from loader

    torch.manual_seed(0)
    stream = batches()
    for _ in range(args.warmup):
        next(stream)
    seen, start = 0, time.perf_counter()
    for _ in range(args.batches):
        x, _ = next(stream)
        seen += x.shape[0]
    elapsed = time.perf_counter() - start
    assert x.shape[1:] == (3, size, size) and x.dtype == torch.float32
    return {"images_per_s": seen / elapsed, "seconds": elapsed, "images": seen, "images_in_folder": len(dataset)}


def main() -> None:
    args = parse_args()
    import torch
    from torchvision import datasets

    if not args.data.is_dir():
        raise SystemExit(f"{args.data} does not exist: pass --data <folder with NORMAL/ and PNEUMONIA/>")
    paths = [path for path, _ in datasets.ImageFolder(str(args.data)).samples]  # the very files both sides read
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet (timm's default), both sides
    info = {
        "size": args.size, "batch_size": args.batch_size, "batches": args.batches, "augment": not args.no_augment,
        "images": len(paths), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(), "torch": torch.__version__, "load_avg_at_start": os.getloadavg()[0],
    }
    cache = bench_cache(args, paths, mean, std)
    tv = bench_torchvision(args, mean, std)
    ratio = cache["images_per_s"] / tv["images_per_s"]
    result = {**info, "cache": cache, "torchvision": tv, "ratio": ratio, "load_avg_at_end": os.getloadavg()[0]}
    cold = f"{cache['cold_build_s']:.1f} s" if cache["cold_build_s"] is not None else "reused (--keep-cache)"
    print(f"{len(paths)} images at {args.size} px, batch {args.batch_size}, augment "
          f"{'off' if args.no_augment else f'on (strength {args.strength})'}; {os.cpu_count()} CPUs, "
          f"torch threads {torch.get_num_threads()}, load avg {info['load_avg_at_start']:.2f} -> "
          f"{result['load_avg_at_end']:.2f}")
    print(f"cache build (cold, once): {cold}; warm open {cache['warm_open_s'] * 1e3:.1f} ms")
    print(f"cxr cache + BatchPipeline : {cache['images_per_s']:8.0f} img/s  ({cache['images']} images in "
          f"{cache['seconds']:.2f} s)")
    print(f"torchvision ImageFolder   : {tv['images_per_s']:8.0f} img/s  ({tv['images']} images in "
          f"{tv['seconds']:.2f} s, {args.workers} workers)")
    print(f"ratio                     : {ratio:8.2f}x  (target >= 20x)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
