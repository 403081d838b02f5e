"""How fast does cxr.engine train each backbone of the full space on one GPU, and what moves it: the precision (fp32,
bf16, fp16 with loss scaling), the channels_last layout and the batch size (train images/s, peak GPU memory); how
much of a step waits for data with augmentation on the GPU or on the CPU; and how many images/s 1, 2 and 4 trials
sharing the GPU train together (what --gpus-per-trial 1, 0.5 and 0.25 give)?

Synthetic films (cxr.synthetic) at 224 px, random initialisation (pretrained weights change values, not speed).
Throughput is cxr.engine.fit's own train_images_per_s of a second epoch (the first pays for CUDA's and the
allocator's start-up), peak memory that epoch's torch.cuda.max_memory_allocated. Waiting for data: 1 - (the engine's
step on a batch already on the GPU) / (a step of fit's whole pass: load, copy, augment, step), per place of
augmentation (cxr.engine.EngineOptions.augment_on). Shared GPU: each trial trains in a spawned process of its own, as
Ray runs GPU trials; they start their timed epoch together (a barrier) and the aggregate is the sum of their rates.

    python benchmarks/bench_gpu.py [--backbones resnet50,convnext_tiny] [--batch-sizes 32,128] [--steps 20] [--out DIR]
    python benchmarks/bench_gpu.py --smoke   # on the CPU: test_efficientnet at 32 px, 2 steps, fewer variants

Writes DIR (default benchmarks/out/gpu): throughput.csv, data_wait.csv, processes.csv and bench_gpu.md (the three
tables, the device and the machine), and prints bench_gpu.md.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import multiprocessing
import queue
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common import OUT, machine, markdown_table

# search_spaces/full.py's BACKBONES (the script imports only cxr; tests/test_bench_gpu.py checks that they agree)
FULL_BACKBONES = ["tf_efficientnetv2_s", "densenet121", "resnet50", "convnext_tiny", "efficientnet_b0", "resnet18"]
PRECISIONS = {"fp32": "fp32", "bf16": "bf16", "fp16+scaler": "fp16"}  # table label: the config key's value
THROUGHPUT_COLUMNS = ("backbone", "precision", "channels_last", "batch", "train images/s", "peak GPU MiB")
DATA_WAIT_COLUMNS = ("backbone", "augmentation on", "step ms", "compute-only step ms", "waiting for data")
PROCESS_COLUMNS = ("backbone", "processes", "images/s per process", "aggregate images/s", "x one process")
WORKER_TIMEOUT_S = 1800


@dataclass(frozen=True)
class Plan:
    device: str
    image_size: int
    batch_sizes: tuple[int, ...]
    steps: int  # training steps per epoch at the largest batch size
    processes: tuple[int, ...]


SMOKE = Plan("cpu", 32, (4, 8), 2, (1, 2))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", help=f"comma-separated subset of {','.join(FULL_BACKBONES)} (default: all)")
    parser.add_argument("--batch-sizes", default="32,128", help="the two (or more) batch sizes, comma-separated")
    parser.add_argument("--steps", type=int, default=20, help="steps per epoch at the largest batch size")
    parser.add_argument("--processes", default="1,2,4", help="trials sharing the GPU, comma-separated")
    parser.add_argument("--out", type=Path, default=OUT / "gpu", help="folder for the CSV files and bench_gpu.md")
    parser.add_argument("--smoke", action="store_true",
                        help="on the CPU, test_efficientnet at 32 px, 2 steps: checks every table's plumbing")
    return parser.parse_args()


def train_config(backbone: str, plan: Plan, batch: int, precision: str = "auto"):
    from cxr.config import TrainConfig

    return TrainConfig(backbone=backbone, pretrained=False, image_size=plan.image_size, batch_size=batch, epochs=2,
                       precision=precision, augment=0.5, early_stopping_patience=0)


def write_films(folder: Path, plan: Plan) -> Path:
    """films.npy and labels.npy: a small synthetic set repeated to fill the largest batch's steps, plus one batch of
    the smallest size for validation (every process of the shared-GPU rows maps the same files). The classes
    alternate, so that any two neighbouring rows (the validation batch) hold both."""
    import numpy as np

    from cxr.dataset import load_dataset
    from cxr.synthetic import create_synthetic

    source = load_dataset(create_synthetic(folder / "synthetic", n_patients=24, size=plan.image_size),
                          image_size=plan.image_size, cache_dir=folder / "cache")
    count = plan.steps * max(plan.batch_sizes) + min(plan.batch_sizes)
    classes = [np.flatnonzero(source.labels == label) for label in (0, 1)]
    pairs = max(len(c) for c in classes)
    pick = np.resize(np.column_stack([np.resize(c, pairs) for c in classes]).ravel(), count)
    np.save(folder / "films.npy", np.asarray(source.images)[pick])
    np.save(folder / "labels.npy", source.labels[pick])
    return folder


def load_films(folder: Path, val: int):
    """The films as the engine takes them: all but the last `val` rows train, those validate."""
    import numpy as np
    import pandas as pd

    from cxr.dataset import CxrData

    labels = np.load(folder / "labels.npy")
    split = np.where(np.arange(len(labels)) < len(labels) - val, "train", "val")
    return CxrData(np.load(folder / "films.npy", mmap_mode="r"), pd.DataFrame({"label": labels, "split": split}))


def second_epoch(config, data, device, options=None) -> dict:
    """fit's metrics of its second epoch, whose peak memory counts from that epoch's start."""
    import torch

    from cxr.engine import fit

    def reset_peak(epoch: int, metrics: dict, save) -> None:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    return fit(config, data, reset_peak, device=device, options=options).history[1]


def throughput_rows(backbone: str, plan: Plan, data, device) -> list[dict]:
    from cxr.engine import EngineOptions
    from cxr.errors import InputError

    rows = []
    for (label, precision), channels_last, batch in itertools.product(PRECISIONS.items(), (False, True),
                                                                      plan.batch_sizes):
        try:
            epoch = second_epoch(train_config(backbone, plan, batch, precision), data, device,
                                 EngineOptions(channels_last=channels_last))
            rate = round(epoch["train_images_per_s"], 1)
            peak = round(epoch["gpu_peak_mem_mb"]) if "gpu_peak_mem_mb" in epoch else None
        except InputError:  # the engine refuses bf16 on a GPU that only emulates it
            rate, peak = "refused: bf16 emulated", None
        rows.append(dict(zip(THROUGHPUT_COLUMNS, (backbone, label, channels_last, batch, rate, peak))))
    return rows


def compute_step_ms(config, data, device, options, steps: int) -> float:
    """Milliseconds of the engine's own training step on one batch already on the device: no loading, copying or
    augmenting (cxr.engine._Run, the step fit runs)."""
    from cxr.engine import _Run

    run = _Run(config, data, device, None, options)
    films, labels = run._load(data.indices("train")[: config.batch_size])
    x, y = films.to(device), labels.to(device)
    if run.host_pipeline is None:
        x = run.pipeline(x, train=True)
    run.train_model.train()
    for _ in range(2):  # warm-up, as fit's first epoch
        run._step(x, y)
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        run._step(x, y)
    _synchronize(device)
    return 1000 * (time.perf_counter() - start) / steps


def data_wait_rows(backbone: str, plan: Plan, data, device) -> list[dict]:
    from cxr.engine import EngineOptions

    config = train_config(backbone, plan, max(plan.batch_sizes))
    rows = []
    for place in ("device", "cpu"):
        options = EngineOptions(augment_on=place)
        step_ms = 1000 * config.batch_size / second_epoch(config, data, device, options)["train_images_per_s"]
        compute_ms = compute_step_ms(config, data, device, options, plan.steps)
        rows.append(dict(zip(DATA_WAIT_COLUMNS, (backbone, place, round(step_ms, 2), round(compute_ms, 2),
                                                 f"{max(0.0, 1 - compute_ms / step_ms):.0%}"))))
    return rows


def process_rows(backbone: str, plan: Plan, folder: Path, device) -> list[dict]:
    config = train_config(backbone, plan, min(plan.batch_sizes))
    rows, single = [], None
    for n in plan.processes:
        rates = shared_device_rates(config, folder, min(plan.batch_sizes), str(device), n)
        total = sum(rates)
        single = single or total / n
        rows.append(dict(zip(PROCESS_COLUMNS, (backbone, n, round(total / n, 1), round(total, 1),
                                               round(total / single, 2)))))
    return rows


def shared_device_rates(config, folder: Path, val: int, device: str, n: int) -> list[float]:
    """Train images/s of n spawned processes training config at once on device (their second epochs together); one
    alone trains in this process (the same work, without a second Python and torch start-up)."""
    import torch

    from cxr.engine import fit

    if n == 1:
        return [fit(config, load_films(folder, val), device=torch.device(device)).history[1]["train_images_per_s"]]

    context = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
    barrier, results = context.Barrier(n), context.Queue()
    # each its share of this process's threads, as Ray's --cpus-per-trial shares the cores (more threads than cores
    # stall them all)
    threads = max(1, torch.get_num_threads() // n)
    workers = [context.Process(target=_trial_process, args=(config, str(folder), val, device, threads, barrier, results))
               for _ in range(n)]
    for worker in workers:
        worker.start()
    try:
        rates = [results.get(timeout=WORKER_TIMEOUT_S) for _ in workers]
    except queue.Empty:
        raise RuntimeError(f"a process of {n} gave no rate (exit codes {[w.exitcode for w in workers]})") from None
    for worker in workers:
        worker.join()
    return rates


def _trial_process(config, folder: str, val: int, device: str, threads: int, barrier, results) -> None:
    import torch

    from cxr.engine import fit

    torch.set_num_threads(threads)

    def together(epoch: int, metrics: dict, save) -> None:
        if epoch == 1:
            barrier.wait()

    history = fit(config, load_films(Path(folder), val), together, device=torch.device(device)).history
    results.put(history[1]["train_images_per_s"])


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_line(device) -> str:
    import torch

    from cxr.precision import resolve_precision

    if device.type != "cuda":
        return f"device: CPU (--smoke; no GPU numbers), torch {torch.__version__}, precision auto -> fp32"
    major, minor = torch.cuda.get_device_capability(device)
    return (f"device: {torch.cuda.get_device_name(device)} (compute capability {major}.{minor}, "
            f"{torch.cuda.get_device_properties(device).total_memory / 2**30:.0f} GiB), torch {torch.__version__}, "
            f"CUDA {torch.version.cuda}, precision auto -> {resolve_precision('auto', device)}")


def write_outputs(out: Path, tables: dict[str, list[dict]], header: list[str]) -> str:
    out.mkdir(parents=True, exist_ok=True)
    sections = ["# bench_gpu.py", "", *header]
    for name, rows in tables.items():
        with open(out / f"{name}.csv", "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        cells = [{k: "-" if v is None else v for k, v in row.items()} for row in rows]
        sections += ["", f"## {name.replace('_', ' ')}", "", markdown_table(cells)]
    text = "\n".join(sections) + "\n"
    (out / "bench_gpu.md").write_text(text)
    return text


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    if args.smoke:
        plan, backbones = SMOKE, ["test_efficientnet"]
    else:
        plan = Plan("cuda", 224, tuple(int(b) for b in args.batch_sizes.split(",")), args.steps,
                    tuple(int(n) for n in args.processes.split(",")))
        backbones = [b.strip() for b in args.backbones.split(",")] if args.backbones else FULL_BACKBONES
        unknown = sorted(set(backbones) - set(FULL_BACKBONES))
        if unknown:
            raise SystemExit(f"--backbones {','.join(unknown)}: not in the full space ({','.join(FULL_BACKBONES)})")
        if plan.processes[0] != 1 or len(plan.batch_sizes) < 2:
            raise SystemExit("--processes must start with 1 (the rate the others are compared with) and "
                             "--batch-sizes name two or more")
    import torch

    if args.smoke:
        torch.set_num_threads(1)  # tiny batches: a second thread only waits, and on a busy machine it stalls the first
    device = torch.device(plan.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: run with --smoke for the CPU check of the plumbing")
    tables = {"throughput": [], "data_wait": [], "processes": []}
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        folder = write_films(Path(tmp), plan)
        data = load_films(folder, min(plan.batch_sizes))
        for backbone in backbones:
            tables["throughput"] += throughput_rows(backbone, plan, data, device)
            tables["data_wait"] += data_wait_rows(backbone, plan, data, device)
            tables["processes"] += process_rows(backbone, plan, folder, device)
    header = [device_line(device), f"machine: {machine()}",
              f"{plan.image_size} px, {plan.steps} steps an epoch at batch {max(plan.batch_sizes)}; "
              f"wall time {time.perf_counter() - started:.0f} s"]
    print(write_outputs(args.out, tables, header))


if __name__ == "__main__":
    main()
