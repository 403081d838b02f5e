"""What does the product's driver cost over bare Ray Tune at 100 and 1,000 trials, with the training taken out?

Everything but the training: the product arm runs tune.search.run_search (its Optuna searcher with the journal, ASHA,
its live reporter, per-epoch checkpoints) on the `full` space, then builds the tables (tune.results.create_tables),
writes best.json and renders the report's data and search sections (tune.report.write_report: there is no final
model). Each trial is a stand-in (train_fn=standin_trial) that reports a learning curve drawn from a seeded
synthetic response surface of the config (a few milliseconds per epoch, a checkpoint per epoch as the real
trainable writes, no torch). The bare arms run ray.tune.Tuner on the same stand-in with random search and no
journal, under the same ASHA (and FIFO, for reference), with the same resources and process reuse. Every (arm, size)
runs in its own subprocess, so its peak RSS is its own (--smoke: both arms in one); all arms of one invocation run on
the same machine, back to back. Its other questions: how many trials start before TPE can steer, with and without the start-up cap
(--startup, on Ray; --simulate, an event simulation), and what the searcher snapshot costs (--snapshot).

    python benchmarks/bench_scale.py --sizes 100 1000      # the table in BENCHMARKS.md
    python benchmarks/bench_scale.py --smoke               # 21 trials, product and bare ASHA in one process (a test)
    python benchmarks/bench_scale.py --startup 8 32 64     # trials started before TPE steers, C trials at once
    python benchmarks/bench_scale.py --simulate 8 32 64    # the same question without Ray processes
    python benchmarks/bench_scale.py --snapshot 100 1000   # the searcher snapshot at N finished trials
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

from common import OUT, REPO

SCALE_OUT = OUT / "scale"
METRIC = "val_spec_at_recall"
EPOCHS = 9  # ASHA rungs 1, 3, 9 (reduction factor 3), as the product configures it
EPOCH_S = 0.003  # the stand-in's "training" per epoch
CPUS, CPUS_PER_TRIAL = 2, 0.25  # 8 trials at once on a 2-core machine
ARMS = ("product", "bare-asha", "bare-fifo")
SMOKE_TRIALS = 21  # the fewest with trials outside the report's top 15 and outside its top-20 learning curves (a band)


def surface(config: dict) -> float:
    """Seeded synthetic final specificity of a config: best near lr 3e-4, dropout 0.2, most blocks unfrozen."""
    lr = math.log10(config.get("lr", 1e-3) / 3e-4)
    dropout = config.get("dropout", 0.2) - 0.2
    blocks = min(config.get("unfrozen_blocks", 0), 8) / 8
    backbone = (zlib.crc32(str(config.get("backbone")).encode()) % 7) / 100
    return max(0.05, 0.95 - 0.25 * lr * lr - 0.6 * dropout * dropout - 0.15 * (1 - blocks) - backbone)


def curve_point(final: float, epoch: int, rng) -> float:
    """The stand-in's learning curve: towards `final`, with noise."""
    return float(min(1.0, max(0.0, final * (1 - math.exp(-epoch / 2.5)) + rng.normal(0, 0.02))))


def standin_trial(config: dict, context=None) -> None:
    """A trial without training: per epoch a point of a noisy learning curve towards surface(config), reported with a
    tiny checkpoint, as tune.trainable reports a real epoch."""
    import numpy as np
    from ray import tune as ray_tune

    rng = np.random.default_rng(zlib.crc32(json.dumps(config, sort_keys=True, default=str).encode()))
    final, best, best_epoch = surface(config), -1.0, 0
    for epoch in range(1, int(config.get("epochs", EPOCHS)) + 1):
        time.sleep(EPOCH_S)
        value = curve_point(final, epoch, rng)
        best, best_epoch = max(best, value), epoch if value > best else best_epoch
        metrics = {"epoch": epoch, METRIC: value, "val_auroc": 0.5 + value / 2, "val_loss": 1 - value,
                   "stopped_early": False, "best_epoch": best_epoch}
        with tempfile.TemporaryDirectory() as folder:
            Path(folder, "state.json").write_text(json.dumps({"epoch": epoch}))
            ray_tune.report(metrics, checkpoint=ray_tune.Checkpoint.from_directory(folder))


def _random_space(epochs: int) -> dict:
    """Bare Ray Tune's random search over the keys of search_spaces/full.py that the surface reads."""
    from ray import tune as ray_tune

    from search_spaces.full import BACKBONES

    return {"backbone": ray_tune.choice(BACKBONES), "lr": ray_tune.loguniform(1e-5, 3e-3),
            "dropout": ray_tune.uniform(0.0, 0.5), "unfrozen_blocks": ray_tune.randint(0, 9),
            "batch_size": ray_tune.choice([16, 32, 64]), "augment": ray_tune.uniform(0.0, 1.0), "epochs": epochs}


def run_arms(arms: list[str], trials: int, root: Path) -> list[dict]:
    """Arms in this process, one Ray start for all: the measurements as dicts."""
    import ray

    ray.init(address="local", num_cpus=CPUS, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        return [{"arm": arm, **(_product(trials, root) if arm == "product" else _bare(arm, trials, root))} for arm in arms]
    finally:
        ray.shutdown()


def _product(trials: int, root: Path) -> dict:
    import pandas as pd
    import ray

    from cxr.jsonio import write_json
    from cxr.splits import MANIFEST_COLUMNS
    from tune import search
    from tune.report import write_report
    from tune.results import ExperimentPaths, create_tables, write_table
    from tune.spaces import load_space, validate

    paths = ExperimentPaths(root / "scale")
    paths.root.mkdir(parents=True)
    space = load_space("full").with_overrides({"epochs": EPOCHS, "monitor": METRIC, "seed": 0})
    checked = validate(space, seed=0)
    settings = search.SearchSettings(
        metric=METRIC, num_samples=trials, max_epochs=EPOCHS, trial_scheduler="asha", cpus_per_trial=CPUS_PER_TRIAL,
        gpus_per_trial=0, workers_per_trial=1, max_concurrent=0, seed=0, storage_path=str(paths.root),
        journal_path=str(paths.journal), study_name="scale", config_keys=checked.common_keys)
    suggest_s = _time_suggestions(search.JournalSearch)
    started = time.monotonic()
    records = search.run_search(settings, space, checked, ray.put(None), {}, resume=False, train_fn=standin_trial)
    wall = time.monotonic() - started
    started = time.monotonic()
    trials_table, epochs = create_tables(records, METRIC)
    write_table(paths.trials, trials_table)
    write_table(paths.epochs, epochs)
    tables_s = time.monotonic() - started
    top = trials_table.iloc[0]
    write_json(paths.best, {"trial_id": top["trial_id"], "metric": METRIC, "value": float(top[f"best_{METRIC}"])})
    write_json(paths.run, {"name": "scale", "metric": METRIC, "space": "full (stand-in trainable)"})
    write_table(paths.splits, pd.DataFrame(columns=MANIFEST_COLUMNS))
    started = time.monotonic()
    page = write_report(paths.root)
    report_s = time.monotonic() - started
    return {**_common(trials, wall, epochs), "searcher_ms_median": 1000 * statistics.median(suggest_s),
            "searcher_ms_p95": 1000 * _p95(suggest_s), "journal_mib": paths.journal.stat().st_size / 2**20,
            "tables_s": tables_s, "report_s": report_s, "report_mib": page.stat().st_size / 2**20,
            "report": str(page)}


def _bare(arm: str, trials: int, root: Path) -> dict:
    import pandas as pd
    from ray import tune as ray_tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=EPOCHS, grace_period=1, reduction_factor=3)
                 if arm == "bare-asha" else FIFOScheduler())
    suggest_s = _time_suggestions(BasicVariantGenerator, "next_trial")
    trainable = ray_tune.with_resources(ray_tune.with_parameters(standin_trial, context=None), {"cpu": CPUS_PER_TRIAL})
    tuner = ray_tune.Tuner(trainable, param_space=_random_space(EPOCHS),
                           tune_config=ray_tune.TuneConfig(metric=METRIC, mode="max", scheduler=scheduler,
                                                           search_alg=BasicVariantGenerator(random_state=0),
                                                           num_samples=trials, reuse_actors=True),
                           run_config=ray_tune.RunConfig(name="tune", storage_path=str(root), verbose=0,
                                                         checkpoint_config=ray_tune.CheckpointConfig(num_to_keep=1)))
    started = time.monotonic()
    grid = tuner.fit()
    wall = time.monotonic() - started
    epochs = pd.concat([r.metrics_dataframe for r in grid if r.metrics_dataframe is not None], ignore_index=True)
    return {**_common(trials, wall, epochs), "searcher_ms_median": 1000 * statistics.median(suggest_s),
            "searcher_ms_p95": 1000 * _p95(suggest_s)}


def _common(trials: int, wall: float, epochs) -> dict:
    return {"trials": trials, "wall_s": wall, "trial_starts_per_min": 60 * trials / wall, "epochs_run": len(epochs),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _time_suggestions(cls, method: str = "suggest") -> list[float]:
    """Wall time of every call of cls.method that hands out a trial (benchmark-side instrumentation)."""
    durations, original = [], getattr(cls, method)

    def timed(self, *args):
        started = time.perf_counter()
        out = original(self, *args)
        if out is not None:
            durations.append(time.perf_counter() - started)
        return out

    setattr(cls, method, timed)
    return durations


def _p95(values: list[float]) -> float:
    return sorted(values)[min(len(values) - 1, int(0.95 * len(values)))]


def startup(concurrency: int, root: Path, gated: bool = True) -> dict:
    """The product arm with `concurrency` trials at once (cpus per trial shrunk to fit), 4x as many trials: how many
    were asked before TPE could steer, i.e. before STARTUP_TRIALS trials had finished (COMPLETE or PRUNED). Ungated
    is the searcher without its start-up cap (what Ray's OptunaSearch does), for the before/after."""
    import optuna
    import ray

    from tune import search
    from tune.spaces import load_space, validate

    if not gated:
        search.startup_cap = lambda num_samples: None  # benchmark-side: the searcher as it was before the cap
    ray.init(address="local", num_cpus=CPUS, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             object_store_memory=2**30)  # 64 worker processes at once must fit in 24 GiB
    try:
        space = load_space("full").with_overrides({"epochs": EPOCHS, "monitor": METRIC, "seed": 0})
        checked = validate(space, seed=0)
        journal = root / "optuna.journal"
        settings = search.SearchSettings(
            metric=METRIC, num_samples=4 * concurrency, max_epochs=EPOCHS, trial_scheduler="asha",
            cpus_per_trial=CPUS / concurrency, gpus_per_trial=0, workers_per_trial=1, max_concurrent=concurrency,
            seed=0, storage_path=str(root), journal_path=str(journal), study_name="startup", config_keys=checked.common_keys)
        started = time.monotonic()
        search.run_search(settings, space, checked, ray.put(None), {}, resume=False, train_fn=standin_trial)
        wall = time.monotonic() - started
    finally:
        ray.shutdown()
    trials = optuna.load_study(study_name="startup", storage=search.open_study_storage(journal)).trials
    finished = sorted(t.datetime_complete for t in trials if t.state.name in ("COMPLETE", "PRUNED"))
    steers_from = finished[search.STARTUP_TRIALS - 1]
    random = sum(t.datetime_start < steers_from for t in trials)
    values = sorted((t.value for t in trials if t.value is not None), reverse=True)
    return {"concurrency": concurrency, "gated": gated, "trials": len(trials), "random_before_tpe": random,
            "wall_s": wall, "best": values[0], "top5_mean": statistics.mean(values[:5])}


def simulate_startup(concurrency: int, root: Path, gated: bool, seed: int = 0, per_slot: int = 4) -> dict:
    """The same question as startup(), without Ray processes (64 at once do not fit in 24 GiB): an event simulation
    in epoch units, C slots, per_slot x C trials, each epoch 1 +- 30 % long (seeded), the product's searcher (journal, TPE,
    start-up cap or none) and the product's ASHA (Ray's AsyncHyperBandScheduler, told each epoch as Tune tells it).
    A trial is random when fewer than STARTUP_TRIALS had finished at its suggestion (Optuna's own rule). Also: the
    makespan in epochs and the slot-epochs left idle while trials remained to start."""
    import heapq
    from types import SimpleNamespace

    import numpy as np
    from ray.tune.schedulers import TrialScheduler

    from tune import search
    from tune.spaces import load_space

    space = load_space("full").with_overrides({"epochs": EPOCHS, "monitor": METRIC, "seed": 0})
    settings = search.SearchSettings(
        metric=METRIC, num_samples=per_slot * concurrency, max_epochs=EPOCHS, trial_scheduler="asha", cpus_per_trial=1,
        gpus_per_trial=0, workers_per_trial=1, max_concurrent=concurrency, seed=seed, storage_path=str(root),
        journal_path=str(root / f"sim-{concurrency}-{gated}.journal"), study_name="sim")
    searcher = search.JournalSearch(space.fn, METRIC, search.create_sampler(settings), "sim", settings.journal_path)
    if gated:
        searcher = search.StartupCap(searcher, search.startup_cap(settings.num_samples))
    scheduler = search.create_trial_scheduler(settings)
    scheduler.set_search_properties(METRIC, "max")
    rng = np.random.default_rng(seed)
    events, started, finished, random, idle, now, running, configs = [], 0, 0, 0, 0.0, 0.0, 0, {}
    while True:
        while running < concurrency and started < settings.num_samples:
            trial_id = f"t{started}"
            config = searcher.suggest(trial_id)
            if config is None:
                break
            random += finished < search.STARTUP_TRIALS
            configs[trial_id], started, running = config, started + 1, running + 1
            scheduler.on_trial_add(None, SimpleNamespace(trial_id=trial_id))
            heapq.heappush(events, (now + rng.uniform(0.7, 1.3), trial_id, 1))
        if not events:
            break
        at, trial_id, epoch = heapq.heappop(events)
        if started < settings.num_samples:
            idle += (concurrency - running) * (at - now)
        now = at
        value = curve_point(surface(configs[trial_id]), epoch, rng)
        result = {METRIC: value, "training_iteration": epoch}
        searcher.on_trial_result(trial_id, result)
        trial = SimpleNamespace(trial_id=trial_id)
        if epoch >= EPOCHS or scheduler.on_trial_result(None, trial, result) == TrialScheduler.STOP:
            searcher.on_trial_complete(trial_id, {**result, "epoch": epoch, "config/epochs": EPOCHS})
            if epoch < EPOCHS:
                scheduler.on_trial_complete(None, trial, result)
            finished, running = finished + 1, running - 1
        else:
            heapq.heappush(events, (now + rng.uniform(0.7, 1.3), trial_id, epoch + 1))
    return {"concurrency": concurrency, "gated": gated, "trials": started, "random_before_tpe": random,
            "makespan_epochs": now, "idle_slot_epochs": idle}


def snapshot(trials: int, root: Path, repeats: int = 20) -> dict:
    """The searcher snapshot Ray takes after every trial checkpoint, at `trials` finished trials, without Ray
    running: the product's (Optuna trial numbers) against Ray's own OptunaSearch.save (the Optuna trials pickled)."""
    from tune import search
    from tune.spaces import load_space, validate

    space = load_space("full").with_overrides({"epochs": EPOCHS, "monitor": METRIC, "seed": 0})
    settings = search.SearchSettings(
        metric=METRIC, num_samples=trials, max_epochs=EPOCHS, trial_scheduler="asha", cpus_per_trial=1,
        gpus_per_trial=0, workers_per_trial=1, max_concurrent=0, seed=0, storage_path=str(root),
        journal_path=str(root / "optuna.journal"), study_name="snapshot")
    searcher = search.create_searcher(settings, space, validate(space, seed=0),
                                    sampler=search.optuna.samplers.RandomSampler(seed=0))  # fast to fill
    for i in range(trials):
        config = searcher.suggest(f"t{i}")
        for epoch in (1, 2, 3):
            searcher.on_trial_result(f"t{i}", {METRIC: surface(config) * epoch / 3, "training_iteration": epoch})
        searcher.on_trial_complete(f"t{i}", {METRIC: surface(config), "epoch": 3, "config/epochs": 3})
    out = {"trials": trials}
    for name, save in (("product", searcher.save), ("ray", lambda path: _ray_style_save(searcher, path))):
        started = time.perf_counter()
        for _ in range(repeats):
            save(str(root / f"{name}.pkl"))
        out[f"{name}_ms"] = 1000 * (time.perf_counter() - started) / repeats
        out[f"{name}_kib"] = (root / f"{name}.pkl").stat().st_size / 1024
    return out


def _ray_style_save(searcher, path: str) -> None:
    """What Ray's OptunaSearch.save writes: a pickle of its state, which holds the Optuna trials and through them the
    study and every trial in its storage."""
    import pickle

    Path(path).write_bytes(pickle.dumps({"trials": searcher.study.get_trials(deepcopy=False), "study": searcher.study}))


def measure(arms: list[str], trials: int, out_dir: Path) -> list[dict]:
    """The arms in a subprocess of their own (one arm: its own peak RSS, its own Ray)."""
    with tempfile.TemporaryDirectory(dir=out_dir) as root:
        out = Path(root) / "result.json"
        log = out_dir / f"{'+'.join(arms)}-{trials}.log"
        with log.open("w") as sink:
            subprocess.run([sys.executable, __file__, "--arm", *arms, "--trials", str(trials), "--root", root],
                           cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, check=True,
                           env={**os.environ, "RAY_AIR_NEW_OUTPUT": "0", "PYTHONPATH": str(REPO)})
        results = json.loads(out.read_text())
        for result in results:
            if "report" in result:  # keep the report (a screenshot of it is the readability check)
                kept = out_dir / f"report-{trials}"
                shutil.rmtree(kept, ignore_errors=True)
                Path(result["report"]).parent.rename(kept)
                result["report"] = str(kept / "report.html")
        return results


def print_table(results: list[dict]) -> None:
    print("\n| arm | trials | wall s | x bare ASHA | trial starts/min | epochs | searcher ms median / p95 | peak RSS MiB "
          "| journal MiB | tables s | report s (MiB) |\n|---|---|---|---|---|---|---|---|---|---|---|")
    bare = {r["trials"]: r["wall_s"] for r in results if r["arm"] == "bare-asha"}
    for r in results:
        ratio = f"{r['wall_s'] / bare[r['trials']]:.2f}" if r["trials"] in bare else "n/a"
        extra = (f"{r['journal_mib']:.1f} | {r['tables_s']:.1f} | {r['report_s']:.1f} ({r['report_mib']:.1f})"
                 if r["arm"] == "product" else "- | - | -")
        print(f"| {r['arm']} | {r['trials']} | {r['wall_s']:.0f} | {ratio} | {r['trial_starts_per_min']:.0f} | "
              f"{r['epochs_run']} | {r['searcher_ms_median']:.1f} / {r['searcher_ms_p95']:.1f} | "
              f"{r['peak_rss_mib']:.0f} | {extra} |")
    sizes = sorted({r["trials"] for r in results})
    if len(sizes) > 1:
        small, large = sizes[0], sizes[-1]
        for arm in ARMS:
            by = {r["trials"]: r for r in results if r["arm"] == arm}
            if small in by and large in by:
                growth = (by[large]["peak_rss_mib"] - by[small]["peak_rss_mib"]) / (large - small)
                print(f"{arm}: wall {by[large]['wall_s'] / by[small]['wall_s']:.1f}x for {large / small:.0f}x the "
                      f"trials; driver peak RSS +{1024 * growth:.0f} KiB per trial")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    p.add_argument("--smoke", action="store_true", help=f"{SMOKE_TRIALS} trials, product and bare ASHA in one process "
                   "(the second arm's peak RSS is the larger of the two)")
    p.add_argument("--startup", type=int, nargs="+", metavar="C",
                   help="instead: how many trials start before TPE steers with C trials at once (e.g. 8 32 64)")
    p.add_argument("--simulate", type=int, nargs="+", metavar="C",
                   help="instead: the --startup question as an event simulation in epochs (no Ray processes)")
    p.add_argument("--per-slot", type=int, default=4, help="--simulate: trials per concurrent slot")
    p.add_argument("--snapshot", type=int, nargs="+", metavar="N",
                   help="instead: time the searcher snapshot at N finished trials, product vs Ray's own")
    p.add_argument("--out", default=str(SCALE_OUT), help="folder for the logs, results.json and the kept reports")
    p.add_argument("--arm", nargs="+", choices=(*ARMS, "startup", "startup-ungated"), help=argparse.SUPPRESS)  # arms in this process (measure() runs them)
    p.add_argument("--trials", type=int, help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.arm and args.arm[0].startswith("startup"):
        results = [{"arm": arm, **startup(args.trials, Path(args.root), gated=arm == "startup")} for arm in args.arm]
        Path(args.root, "result.json").write_text(json.dumps(results))
        return 0
    if args.arm:
        Path(args.root, "result.json").write_text(json.dumps(run_arms(args.arm, args.trials, Path(args.root))))
        return 0
    out = Path(args.out).resolve()  # Ray wants an absolute storage path
    out.mkdir(parents=True, exist_ok=True)
    if args.snapshot:
        print("\n| finished trials | product snapshot ms (KiB) | Ray's OptunaSearch.save ms (KiB) |\n|---|---|---|")
        for n in args.snapshot:
            with tempfile.TemporaryDirectory(dir=out) as root:
                r = snapshot(n, Path(root))
            print(f"| {n} | {r['product_ms']:.1f} ({r['product_kib']:.0f}) | {r['ray_ms']:.1f} ({r['ray_kib']:.0f}) |")
    if args.simulate:
        print("\n| trials at once | trials | start-up cap | random before TPE could steer | makespan (epochs) | idle "
              "slot-epochs |\n|---|---|---|---|---|---|")
        for c in args.simulate:
            for gated in (False, True):
                with tempfile.TemporaryDirectory(dir=out) as root:
                    r = simulate_startup(c, Path(root), gated, per_slot=args.per_slot)
                cap = max(10, r["trials"] // 4) if gated else "none"
                print(f"| {c} | {r['trials']} | {cap} | {r['random_before_tpe']} | {r['makespan_epochs']:.1f} | "
                      f"{r['idle_slot_epochs']:.0f} |", flush=True)
    if args.snapshot or args.simulate:  # both questions without Ray processes: one invocation may ask both
        return 0
    if args.startup:
        from tune import search

        rows = []
        for c in args.startup:  # each needs c worker processes at once
            for arm in ("startup-ungated", "startup"):
                rows += measure([arm], c, out)
                (out / "startup.json").write_text(json.dumps(rows, indent=1))
        print("\n| trials at once | trials | start-up cap | started before TPE could steer | wall s | best | top-5 mean |"
              "\n|---|---|---|---|---|---|---|")
        for r in rows:
            cap = search.startup_cap(r["trials"]) if r["gated"] else "none"
            print(f"| {r['concurrency']} | {r['trials']} | {cap} | {r['random_before_tpe']} | {r['wall_s']:.0f} | "
                  f"{r['best']:.3f} | {r['top5_mean']:.3f} |")
        return 0
    # the smoke checks the plumbing: both arms in one process (one Python and Ray start-up instead of two)
    sizes, groups = ([SMOKE_TRIALS], [["product", "bare-asha"]]) if args.smoke else (args.sizes, [[a] for a in args.arms])
    results = []
    for n in sizes:
        for arms in groups:
            results += measure(arms, n, out)
            (out / "results.json").write_text(json.dumps(results, indent=1))  # a stopped run keeps what it measured
    print_table(results)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
