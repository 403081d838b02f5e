"""Does every stage's cost grow linearly with the number of films? Wall time and peak RSS of each stage of the tool
on synthetic collections of 5,000 / 20,000 / 50,000 films (and 200,000 for the stages that run no network), with the
growth exponent (log-log slope between consecutive sizes) of each.

    python benchmarks/bench_data_scale.py              # the full table
    python benchmarks/bench_data_scale.py --stages evaluation,report --sizes 20000 50000 --large-sizes
    python benchmarks/bench_data_scale.py --stages epoch,recalibrate,predict --sizes 20000 50000 --repeats 3
    python benchmarks/bench_data_scale.py --smoke      # 300 and 1,000 films, every stage, in a temporary folder

A collection is N tiny JPEGs (40 px, cxr.synthetic's drawings and Kaggle-style names, 1-4 films per patient: N / 2.5
patients, two thirds pneumonia, 1 patient in 200 with a pixel copy of another's film) listed in a manifest (path,
label, patient, split train/test: read_manifest holds val out by patient, as for Kaggle's split), a site manifest of
max(N / 5, 300) films of other patients for cxr.recalibrate and a folder of the N films (--predict-cap) for
cxr.predict. The films are made once, in 2 processes, and shared by every size (a size is the first N).

Each stage runs once, in a fresh Python process (`--stage NAME --films N --work DIR`) that imports what the stage
needs, loads its inputs, resets its peak RSS (/proc/self/clear_refs) and takes its RSS as the baseline, runs the stage
as the product calls it and prints one JSON row: wall time, peak RSS (ru_maxrss, RUSAGE_SELF), the largest peak of
its worker processes (pool workers: VmHWM sampled from /proc; the Ray trial task: measured in the task against its
own baseline) and the CPU other users of the machine took meanwhile. A process runs under an address-space limit
(--memory-limit-gib; not the Ray hand-off, whose object store is mapped): an allocation above it is a MemoryError
row (stage failed: MemoryError), and the run goes on. --smoke runs every stage at both sizes in one process (its numbers
check the plumbing; they are not the stages' costs). epoch and scoring run torch on one thread, as a trial or final
member does (Ray sets OMP_NUM_THREADS to --cpus-per-trial, 1 by default); recalibrate and predict on torch's default,
as their CLIs do.

--repeats R measures every stage and size R times, the rounds interleaved, and reports the median with its range: this
shared machine's speed drifts by +-20 % over tens of seconds (one epoch's per-step time, in tenths of the epoch), so one
run per size can bend a slope by as much as the linearity it is meant to show.

Writes benchmarks/out/data_scale.parquet (one row per run; --smoke: in its temporary folder) and prints
the markdown tables: the rows, then per stage the exponents of wall time, of RSS above baseline and of the workers'
RSS, "(below noise)" where an end is under 0.5 s or 20 MiB, "(machine busy)" where other users took over half a core
during either end (each stage first waits, up to --quiet-wait, for them to take under 0.3). Films, manifests and
decode caches stay under --work (default benchmarks/out/data_scale) for the next run.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from common import OUT, REPO, machine, print_markdown
from cpuload import ForeignLoad, wait_for_quiet

STAGES = {  # name: what the stage measures (the product's own calls)
    "manifest": "cxr.manifest.read_manifest (every row checked, val held out by patient)",
    "audit": "cxr.audit.hash_files + audit (duplicate pixels, patient overlap)",
    "decode": "cxr.images.load_images into an empty cache (32 px)",
    "decode_cached": "cxr.images.load_images again: the cache read back",
    "handoff": "tune.cluster.share, then ray.get(context.data_ref) in a Ray task as a trial does",
    "epoch": "cxr.engine.fit: one epoch of test_efficientnet at 32 px (train + val pass)",
    "scoring": "cxr.engine.predict of one final member over val + test, plain and mirrored",
    "evaluation": "cxr.ensemble.assemble of 3 members' scores: mirroring, cxr.evaluation.evaluate (temperature, "
                  "threshold and its interval, metrics with patient intervals, out-of-sample estimate, subgroups, "
                  "calibration), each member's threshold",
    "report": "tune.report.write_report of an experiment folder (audit.json given)",
    "recalibrate": "python -m cxr.recalibrate on the site manifest",
    "predict": "python -m cxr.predict over a folder of films",
}
NO_NETWORK = ("manifest", "audit", "decode", "decode_cached", "evaluation", "report")
SIZES, LARGE_SIZES, SMOKE_SIZES = (5_000, 20_000, 50_000), (200_000,), (300, 1_000)
IMAGE_SIZE, FILM_PX = 32, 40  # decoded (training) size; the files' own size
TRIAL_CPUS = 1  # torch threads of a trial or final member: Ray sets OMP_NUM_THREADS to --cpus-per-trial (default 1)
FILMS_PER_PATIENT = (1, 4, 2, 3)  # patient p has FILMS_PER_PATIENT[p % 4] films: 2.5 on average
PATIENTS_PER_FOLDER, SITE_SHARE, SITE_MIN = 500, 0.2, 300  # 300 films: enough pneumonia for recall 0.98
NOISE_S, NOISE_MIB = 0.5, 20.0  # below these, a growth exponent says nothing
BUSY_CORES = 0.5  # other users' CPU above which a wall-time exponent is flagged
LIMIT_S = 1.15  # the acceptance bound on the 20,000 -> 50,000 exponents
ROW = "ROW "  # prefix of the one JSON line a stage process prints


# --- the synthetic collection --------------------------------------------------------------------------------------

def first_film(patient: int) -> int:
    """Index of patient's first film in the pool (films are numbered patient by patient)."""
    return 10 * (patient // 4) + (0, 1, 5, 7)[patient % 4]


def patients_for(films: int) -> int:
    """The fewest patients whose films reach `films`."""
    patient = 4 * (films // 10)
    while first_film(patient) < films:
        patient += 1
    return patient


def pool_table(patients: range):
    """path (relative to the work folder), label, patient, split of every film of these patients."""
    import pandas as pd

    from cxr.synthetic import _file_name

    rows = [(f"films/{p // PATIENTS_PER_FOLDER:04d}/{_file_name(p, i, p % 3 != 0)}", int(p % 3 != 0), f"patient{p}",
             "test" if p % 5 == 2 else "train") for p in patients for i in range(FILMS_PER_PATIENT[p % 4])]
    return pd.DataFrame(rows, columns=["path", "label", "patient", "split"])


def draw_patients(work: Path, patients: range) -> None:
    """Write these patients' films, seeded per patient; every 200th patient's first film is drawn as the previous
    patient's first (pixel-identical, another patient: what the audit finds)."""
    import numpy as np
    from PIL import Image

    from cxr.synthetic import _anatomy, draw

    def drawings(p: int):
        rng = np.random.default_rng([7, p])
        anatomy = _anatomy(rng)
        while True:
            yield draw(anatomy, p % 3 != 0, FILM_PX, rng)

    for patient, rows in pool_table(patients).groupby("patient", sort=False):
        p = int(patient.removeprefix("patient"))
        own = drawings(p)
        for k, path in enumerate(rows["path"]):
            (work / path).parent.mkdir(parents=True, exist_ok=True)
            pixels = next(drawings(p - 1)) if k == 0 and p % 200 == 199 else next(own)
            Image.fromarray(pixels).save(work / path, quality=92)


def ensure_films(work: Path, films: int) -> float:
    """The pool holds at least `films` films (made in 2 processes, added to on a later, larger run): seconds spent."""
    marker = work / "films" / "patients.json"
    have = json.loads(marker.read_text())["patients"] if marker.is_file() else 0
    need = patients_for(films)
    if have >= need:
        return 0.0
    start = time.perf_counter()
    step = PATIENTS_PER_FOLDER // 2
    ranges = [range(a, min(a + step, need)) for a in range(have, need, step)]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.starmap(draw_patients, [(work, r) for r in ranges])
    marker.write_text(json.dumps({"patients": need, "film_px": FILM_PX}))
    return time.perf_counter() - start


@dataclass(frozen=True)
class Collection:
    """The inputs of size `films` under work/n<films>/ (manifests relative to it, as a user writes them)."""

    work: Path
    films: int

    root = property(lambda self: self.work / f"n{self.films}")
    manifest = property(lambda self: self.root / "manifest.csv")
    site = property(lambda self: self.root / "site.csv")
    predict_dir = property(lambda self: self.root / "predict")
    cache = property(lambda self: self.root / "cache")
    model = property(lambda self: self.root / "model")

    def site_films(self) -> int:
        return max(int(self.films * SITE_SHARE), SITE_MIN)

    def pool_films(self, site: bool) -> int:
        """Films of the pool this size reads (the site's patients come after the manifest's)."""
        if not site:
            return self.films
        return first_film(patients_for(first_film(patients_for(self.films)) + self.site_films()))

    def write(self, site: bool, predict_cap: int) -> None:
        """The manifests (and, for the network sizes, the site manifest and the predict folder), where missing; the
        splits of an earlier run are dropped (read_manifest may have changed)."""
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "splits.parquet").unlink(missing_ok=True)
        if not self.manifest.is_file():
            self._write_csv(self.manifest, pool_table(range(patients_for(self.films))).iloc[: self.films])
        if site and not self.site.is_file():
            start = patients_for(self.films)
            rows = pool_table(range(start, patients_for(first_film(start) + self.site_films())))
            self._write_csv(self.site, rows.drop(columns="split"))
        if site:
            self._link_predict_films(min(self.films, predict_cap or self.films))

    def _write_csv(self, path: Path, table) -> None:
        table.assign(path="../" + table["path"]).to_csv(path.with_suffix(".tmp"), index=False)
        os.replace(path.with_suffix(".tmp"), path)

    def _link_predict_films(self, count: int) -> None:
        marker = self.predict_dir / ".films"
        if marker.is_file() and int(marker.read_text()) == count:
            return
        shutil.rmtree(self.predict_dir, ignore_errors=True)
        for path in pool_table(range(patients_for(count)))["path"].iloc[:count]:
            target = self.predict_dir / Path(path).relative_to("films")
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(self.work / path, target)
        marker.write_text(str(count))

    def splits(self):
        """The manifest as read_manifest returns it (read once per benchmark run, then from splits.parquet)."""
        import pandas as pd

        from cxr.manifest import read_manifest

        cached = self.root / "splits.parquet"
        if cached.is_file():
            return pd.read_parquet(cached)
        frame = read_manifest(self.manifest)
        frame.to_parquet(cached, index=False)
        return frame

    def dataset(self):
        """CxrData as load_dataset makes it: the 32 px cache (decoded now if the decode stage has not run)."""
        from cxr.dataset import CxrData
        from cxr.images import load_images

        splits = self.splits()
        return CxrData(load_images(splits["path"], IMAGE_SIZE, self.cache), splits)

    def model_folder(self) -> Path:
        """A saved two-member final model of untrained test_efficientnet members (as tests/conftest.py's)."""
        from cxr.config import TrainConfig
        from cxr.models import create_model
        from cxr.package import FinalModel

        if not (self.model / "model.json").is_file():
            config = TrainConfig(backbone="test_efficientnet", pretrained=False, image_size=IMAGE_SIZE)
            members = [create_model(config.backbone, pretrained=False).eval() for _ in range(2)]
            FinalModel(config, members, [1, 2], threshold=0.5, temperature=1.3).save(self.model)
        return self.model


# --- the stages: each a generator that loads its inputs, yields (the measured part starts), runs the stage, yields
# what it reports (the measured part ends), then writes what later stages read ----------------------------------------

def stage_manifest(c: Collection):
    from cxr.manifest import read_manifest

    yield
    frame = read_manifest(c.manifest)
    yield {"val_films": int((frame["split"] == "val").sum())}


def stage_audit(c: Collection):
    from cxr.audit import audit, hash_files
    from cxr.jsonio import write_json

    splits = c.splits()
    (c.root / "audit.json").unlink(missing_ok=True)  # a failed run leaves none for the report
    yield
    result = audit(splits, hash_files(list(splits["path"])))  # as tune.report._audit calls them
    yield {"duplicate_groups": result["duplicate_groups_across_splits"]}
    write_json(c.root / "audit.json", result)


def stage_decode(c: Collection, cold: bool = True):
    from cxr.images import load_images

    paths = list(c.splits()["path"])
    if cold:
        shutil.rmtree(c.cache, ignore_errors=True)
    else:
        load_images(paths, IMAGE_SIZE, c.cache)  # the first run, if the decode stage has not made it
    yield
    images = load_images(paths, IMAGE_SIZE, c.cache)
    yield {"cache_mib": images.nbytes / 2**20}


def stage_decode_cached(c: Collection):
    return stage_decode(c, cold=False)


def stage_epoch(c: Collection):
    import torch

    from cxr.config import TrainConfig
    from cxr.engine import fit

    torch.set_num_threads(TRIAL_CPUS)
    data = c.dataset()
    config = TrainConfig(backbone="test_efficientnet", pretrained=False, epochs=1, image_size=IMAGE_SIZE,
                         early_stopping_patience=0)
    yield
    result = fit(config, data, device=torch.device("cpu"))
    yield {"train_films": len(data.indices("train")), "train_images_per_s": result.history[0]["train_images_per_s"]}


def stage_scoring(c: Collection):
    import torch

    from cxr.augment import mirror
    from cxr.engine import predict
    from cxr.models import create_model

    torch.set_num_threads(TRIAL_CPUS)
    data = c.dataset()
    model = create_model("test_efficientnet", pretrained=False).eval()
    yield
    for split in ("val", "test"):  # what cxr.ensemble.train_member scores for a seed member
        images = data.images[data.indices(split)]
        predict(model, images, image_size=IMAGE_SIZE, contrast_norm="none")
        predict(model, mirror(images), image_size=IMAGE_SIZE, contrast_norm="none")
    yield {"scored_films": int(sum(len(data.indices(s)) for s in ("val", "test")))}


def scored_members(c: Collection, k: int = 3):
    """(config, k members, data) as the final stage hands them to assemble: each member's val and test scores
    (plain and mirrored) correlated with the labels and with each other, all distinct; assemble reads no pixels."""
    import numpy as np

    from cxr.config import TrainConfig
    from cxr.dataset import CxrData
    from cxr.ensemble import Member
    from cxr.models import create_model

    splits = c.splits()
    data = CxrData(np.broadcast_to(np.zeros((1, 1, 1), np.uint8), (len(splits), 1, 1)), splits)
    config = TrainConfig(backbone="test_efficientnet", pretrained=False, image_size=IMAGE_SIZE)
    state = create_model(config.backbone, pretrained=False).state_dict()
    rng = np.random.default_rng(0)
    film = 1.2 * (2 * data.labels - 1) + rng.normal(size=len(splits))  # what every member sees in a film
    members = []
    for seed in range(1, k + 1):
        probs = {}
        for split in ("val", "test"):
            logit = film[data.indices(split)] + rng.normal(0, 0.5, len(data.indices(split)))
            probs[split] = 1 / (1 + np.exp(-logit))
            probs[f"{split}_mirrored"] = 1 / (1 + np.exp(-logit - rng.normal(0, 0.2, len(logit))))
        members.append(Member(seed, 1, state, [{"epoch": 1, "val_auroc": 0.9}], probs))
    return config, members, data


def stage_evaluation(c: Collection):
    from cxr.ensemble import assemble, assess_robustness

    config, members, data = scored_members(c)
    shutil.rmtree(c.root / "final", ignore_errors=True)  # a failed run leaves none for the report
    yield
    model, metrics, predictions, history = assemble(config, members, data)
    yield {"evaluated_films": len(predictions), "n_boot": metrics["n_boot"]}
    from tune.final_stage import write_final  # as the final stage writes it (the stage's time is measured here)
    from tune.results import ExperimentPaths

    paths = ExperimentPaths(c.root)
    # the robustness step runs the members (a network stage, like scoring): here with no perturbation, for the report
    metrics["robustness"] = assess_robustness(model, data, predictions, metrics, bank=())
    write_final(paths, model, metrics | {"final_stage_s": 0.0, "members_s": 0.0}, {paths.predictions: predictions, paths.history: history}, "")


def experiment_folder(c: Collection) -> Path:
    """results/<name>/ as tune.run leaves it before its report: this size's splits, audit.json and final/ (made by
    the audit and evaluation stages, now if they have not run) and a 3-trial search's tables."""
    import pandas as pd

    from cxr.jsonio import write_json
    from tune.results import ExperimentPaths, TrialRecord, create_tables, write_table

    for stage, made in ((stage_audit, c.root / "audit.json"), (stage_evaluation, c.root / "final")):
        if not made.exists():
            for _ in stage(c):
                pass
    paths = ExperimentPaths(c.root / "experiment")
    shutil.rmtree(paths.root, ignore_errors=True)
    shutil.copytree(c.root / "final", paths.final)
    shutil.copyfile(c.root / "audit.json", paths.root / "audit.json")
    metric = "val_spec_at_recall"
    write_json(paths.run, {"name": paths.root.name, "metric": metric})
    write_table(paths.splits, c.splits())
    records = [TrialRecord(f"t{i}", i, {"lr": 10.0**-i}, pd.DataFrame(
        {"epoch": [1, 2], "time_total_s": [1.0, 2.0], metric: [0.5, 0.5 + i / 10], "val_auroc": [0.8, 0.9]}), None)
        for i in (1, 2, 3)]
    trials, epochs = create_tables(records, metric)
    write_table(paths.trials, trials)
    write_table(paths.epochs, epochs)
    write_json(paths.best, {"trial_id": trials["trial_id"].iloc[0], "metric": metric, "config": {}})
    return paths.root


def stage_report(c: Collection):
    import cxr.audit  # noqa: F401  (what write_report imports inside, imported before the baseline)
    import tune.report_plots  # noqa: F401
    from tune.report import write_report

    folder = experiment_folder(c)
    yield
    page = write_report(folder)
    yield {"report_kib": page.stat().st_size / 1024}


def stage_recalibrate(c: Collection):
    import cxr.evaluation  # noqa: F401  (imported before the baseline: the CLI imports them on its way)
    import cxr.kaggle  # noqa: F401
    import cxr.package  # noqa: F401
    from cxr import recalibrate

    model, out = c.model_folder(), c.root / "recalibrated"
    shutil.rmtree(out, ignore_errors=True)
    yield
    code = recalibrate.main(["--model", str(model), "--data", str(c.site), "--out", str(out)])
    if code:
        raise RuntimeError(f"python -m cxr.recalibrate exited {code} (its stderr says why)")
    yield {"site_films": json.loads((out / "recalibration.json").read_text())["films"]}


def stage_predict(c: Collection):
    import cxr.package  # noqa: F401  (imported before the baseline, as above)
    import pandas as pd
    import tqdm  # noqa: F401
    from cxr import predict

    model, out = c.model_folder(), c.root / "predicted.parquet"
    yield
    code = predict.main([str(c.predict_dir), "--model", str(model), "--out", str(out), "--overwrite"])
    if code:
        raise RuntimeError(f"python -m cxr.predict exited {code} (its stderr says why)")
    yield {"predicted_films": len(pd.read_parquet(out))}


def trial_fetch(context) -> dict:
    """In a Ray worker: what a trial does with its data (tune.trainable: ray.get(context.data_ref), its splits and
    labels, every pixel read once), measured from this process's own baseline."""
    import numpy as np
    import ray

    import cxr.dataset  # noqa: F401  (what unpickling the data imports, before the baseline)

    if context.data_ref is None:
        time.sleep(0.5)  # a warm-up: both workers started and importing before the measured part
        return {}
    reset_peak()
    baseline, start = rss_mib(), time.perf_counter()
    data = ray.get(context.data_ref)
    data.indices("train"), data.labels, data.images.sum(dtype=np.uint64)
    return {"task_get_s": time.perf_counter() - start, "children_baseline_mib": baseline,
            "children_peak_mib": peak_mib(), "children": "the Ray trial task"}


def stage_handoff(c: Collection):
    from tune.loopback import bind_to_loopback, ensure_private_token

    bind_to_loopback(None)  # before Ray is imported, as tune.run does
    os.environ.setdefault("RAY_AUTH_TOKEN_PATH", str(c.root / "ray" / "auth_token"))  # not the user's ~/.ray
    ensure_private_token()
    import ray

    from tune import cluster

    data = c.dataset()
    if not ray.is_initialized():  # one start per process (--smoke's sizes share it); the process's exit stops it
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    fetch = ray.remote(num_cpus=1)(trial_fetch)
    # the reference inside a context object, as in tune.trainable.TrialContext (whose module imports torch:
    # seconds per worker, nothing per film)
    ray.get([fetch.remote(SimpleNamespace(data_ref=None)) for _ in range(2)])
    yield
    start = time.perf_counter()
    ref = cluster.share(data)
    put_s = time.perf_counter() - start
    yield {"put_s": put_s, **ray.get(fetch.remote(SimpleNamespace(data_ref=ref)))}


# --- measuring one stage in this process ---------------------------------------------------------------------------

def reset_peak() -> bool:
    """Linux: the peak RSS (VmHWM, ru_maxrss) restarts from the current RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_mib(pid: str = "self", field: str = "VmRSS") -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return peak_mib() if pid == "self" else math.nan


def peak_mib(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


class ChildrenPeak:
    """The largest peak RSS of any process below this one while the block runs: VmHWM of every descendant sampled
    every 0.5 s from /proc (pool workers are the fork server's children, never waited for by this process), and
    RUSAGE_CHILDREN for those that were."""

    def __init__(self):
        self.peaks: dict[int, float] = {}
        self._waited = peak_mib(resource.RUSAGE_CHILDREN)  # a max since this process began: counts only if it grows
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def peak(self) -> float:
        waited = peak_mib(resource.RUSAGE_CHILDREN)
        return max([*self.peaks.values(), waited if waited > self._waited else 0.0]) or math.nan

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            self._sample()

    def _sample(self) -> None:
        parents = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        tree, new = set(), {os.getpid()}
        while new:  # the descendants, a generation at a time
            tree |= new
            new = {pid for pid, ppid in parents.items() if ppid in new} - tree
        for pid in tree - {os.getpid()}:
            hwm = rss_mib(str(pid), "VmHWM")
            if not math.isnan(hwm):
                self.peaks[pid] = max(self.peaks.get(pid, 0.0), hwm)


def measure(stage: str, c: Collection) -> dict:
    """Run one stage in this process: its inputs, then the measured part (one run), then what it leaves for later
    stages. A failure (a MemoryError included) is the row's error; the run goes on."""
    row = {"stage": stage, "films": c.films, "wall_s": math.nan, "error": None}
    steps = globals()[f"stage_{stage}"](c)
    try:
        next(steps)
    except Exception as exc:  # noqa: BLE001  the row says what failed
        return row | {"error": f"input preparation failed: {failure(exc)}"}
    gc.collect()
    gc.freeze()  # what survived is not scanned again: with torch loaded a full collection takes 0.3 s
    row["peak_reset"] = reset_peak()
    row["baseline_mib"] = rss_mib()
    with ChildrenPeak() as children, ForeignLoad() as others:
        start = time.perf_counter()
        try:
            info = next(steps)
        except Exception as exc:  # noqa: BLE001
            info, row["error"] = {}, f"stage failed: {failure(exc)}"
        row["wall_s"] = time.perf_counter() - start
    row["other_cores"] = others.cores  # CPU other users of the machine took meanwhile
    row["peak_mib"] = peak_mib()
    row["above_baseline_mib"] = row["peak_mib"] - row["baseline_mib"]
    row["children"] = info.pop("children", "worker processes" if children.peaks else None)
    row["children_peak_mib"] = info.pop("children_peak_mib", children.peak)
    row["children_above_mib"] = row["children_peak_mib"] - info.pop("children_baseline_mib", math.nan)
    row["info"] = json.dumps(info)
    if row["error"] is None:
        for _ in steps:
            pass
    return row


def failure(exc: Exception) -> str:
    name = "MemoryError" if isinstance(exc, MemoryError) else type(exc).__name__  # numpy's is _ArrayMemoryError
    return f"{name}: {str(exc)[:300]}"


def run_stages_here(args) -> int:
    """--stage a[,b...]: one JSON row per stage, in order, in this process (under --memory-limit-gib of address
    space, unless the Ray hand-off is among them: Ray maps its object store)."""
    if "handoff" not in args.stage and args.memory_limit_gib:
        limit = int(args.memory_limit_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for films in args.films:
        for stage in args.stage:
            print(ROW + json.dumps(measure(stage, Collection(args.work, films)), default=float), flush=True)
    return 0


# --- the parent: collections, one process per stage, the tables ------------------------------------------------------

def run_stages(stages: list[str], films: list[int], args) -> list[dict]:
    """Stages at sizes in one fresh Python process (the full run: one stage at one size; --smoke: all of them); a
    stage whose row never came (the process was killed, ran out of memory or time) is a row with the reason."""
    command = [sys.executable, str(Path(__file__).resolve()), "--stage", ",".join(stages),
               "--films", ",".join(map(str, films)), "--work", str(args.work), "--memory-limit-gib", str(args.memory_limit_gib)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=args.stage_timeout)
        stdout, reason = proc.stdout, f"process exited {proc.returncode}: {proc.stderr.strip()[-500:]}"
    except subprocess.TimeoutExpired as exc:
        stdout, reason = exc.stdout.decode() if exc.stdout else "", f"timed out after {args.stage_timeout:.0f} s"
    process_s = time.perf_counter() - start  # the process: start-up, imports, inputs, the stage, its outputs
    rows = [json.loads(line[len(ROW):]) for line in stdout.splitlines() if line.startswith(ROW)]
    wanted = [(n, s) for n in films for s in stages]
    rows += [{"stage": s, "films": n, "wall_s": math.nan, "error": reason} for n, s in wanted[len(rows):]]
    return [row | {"process_s": process_s} for row in rows]


def plan(args) -> list[tuple[int, str]]:
    """(films, stage) in run order: size by size, so a long run's first rows come early."""
    large = [n for n in args.large_sizes if n not in args.sizes]
    return [(n, s) for n in sorted({*args.sizes, *large}) for s in args.stages if n in args.sizes or s in NO_NETWORK]


def prepare(args, steps: list[tuple[int, str]]) -> dict[int, float]:
    """Films for the largest size, then each size's manifests: seconds spent per size (0: reused)."""
    network = {n for n, s in steps if s not in NO_NETWORK}
    collections = {n: Collection(args.work, n) for n, _ in steps}
    needed = max(c.pool_films(site=n in network) for n, c in collections.items())
    spent = ensure_films(args.work, needed)
    made = f"made in {spent:.0f} s" if spent else "reused"
    print(f"films: {needed:,} in {args.work / 'films'} ({made})", flush=True)
    seconds = {}
    for n, c in collections.items():
        start = time.perf_counter()
        c.write(site=n in network, predict_cap=args.predict_cap)
        seconds[n] = time.perf_counter() - start
    return seconds


def _number(value: float, digits: int = 1) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:,.{digits}f}"


MEDIAN_COLUMNS = ("wall_s", "peak_mib", "above_baseline_mib", "children_peak_mib", "children_above_mib", "process_s")


def median_of_repeats(frame):
    """One row per stage and size: the median of its measured repeats (wall_min/wall_max their range, other_cores the
    busiest), or its first failure where none was measured."""
    import pandas as pd

    out = []
    for _, runs in frame.groupby(["films", "stage"], sort=False):
        ok = runs[runs["error"].isna()]
        if not len(ok):
            out.append(runs.iloc[0].to_dict() | {"runs": 0})
            continue
        row = ok.iloc[0].to_dict() | {c: ok[c].median() for c in MEDIAN_COLUMNS}
        out.append(row | {"runs": len(ok), "wall_min": ok["wall_s"].min(), "wall_max": ok["wall_s"].max(),
                          "other_cores": ok["other_cores"].max()})
    return pd.DataFrame(out)


def print_table(frame) -> None:
    rows = []
    for r in frame.itertuples():
        failed = isinstance(r.error, str)  # NaN where the stage ran (pandas' string columns)
        wall = ": ".join(p.strip() for p in r.error.split(":")[:2]) if failed else _number(r.wall_s, 2)
        if not failed and r.runs > 1:
            wall += f" ({r.wall_min:.2f}-{r.wall_max:.2f}, {r.runs} runs)"
        workers = _number(r.children_peak_mib) + (f" ({r.children})" if isinstance(r.children, str) else "")
        rows.append({"stage": r.stage, "films": f"{r.films:,}", "wall s": wall, "peak RSS MiB": _number(r.peak_mib),
                     "above baseline MiB": _number(r.above_baseline_mib), "workers' peak MiB": workers,
                     "process s": _number(r.process_s), "other users' cores": _number(r.other_cores, 2),
                     "note": r.error[:160] if failed else ""})
    print()
    print_markdown(rows)


def exponent(a: float, b: float, n_a: int, n_b: int, noise: float, busy: bool) -> tuple[float, str]:
    """The log-log slope from (n_a, a) to (n_b, b), as text flagged when either end is below the noise floor or was
    measured while other users took more than BUSY_CORES."""
    if not (math.isfinite(a) and math.isfinite(b)) or a <= 0 or b <= 0:
        return math.nan, "n/a"
    slope = math.log(b / a) / math.log(n_b / n_a)
    return slope, f"{slope:.2f}" + (" (below noise)" if min(a, b) < noise else "") + (" (machine busy)" if busy else "")


def growth(frame):
    """Per stage and pair of consecutive sizes: the exponents of wall time, of RSS above baseline, of the workers'
    RSS (above their baseline where known: the Ray task; else their whole peak)."""
    import pandas as pd

    rows = []
    for stage, runs in frame[frame["error"].isna()].groupby("stage", sort=False):
        runs = runs.sort_values("films")
        workers = runs["children_above_mib"].where(runs["children_above_mib"].notna(), runs["children_peak_mib"])
        for (i, a), (j, b) in zip(list(runs.iterrows())[:-1], list(runs.iterrows())[1:]):
            busy = max(a.other_cores, b.other_cores) > BUSY_CORES
            wall = exponent(a.wall_s, b.wall_s, a.films, b.films, NOISE_S, busy)
            rss = exponent(a.above_baseline_mib, b.above_baseline_mib, a.films, b.films, NOISE_MIB, False)
            kids = exponent(workers[i], workers[j], a.films, b.films, NOISE_MIB, False)
            rows.append({"stage": stage, "smaller": a.films, "larger": b.films, "wall": wall[0], "wall_text": wall[1],
                         "rss": rss[0], "rss_text": rss[1], "workers": kids[0], "workers_text": kids[1]})
    return pd.DataFrame(rows)


def print_growth(slopes) -> None:
    print()
    print_markdown([{"stage": r.stage, "films": f"{r.smaller:,} -> {r.larger:,}", "wall time exponent": r.wall_text,
                     "above-baseline RSS exponent": r.rss_text, "workers' RSS exponent": r.workers_text}
                    for r in slopes.itertuples()])
    judged = slopes[(slopes["smaller"] == 20_000) & (slopes["larger"] == 50_000)] if len(slopes) else slopes
    over = [f"{r.stage} ({what} {text})" for r in judged.itertuples()
            for what, value, text in (("wall", r.wall, r.wall_text), ("RSS", r.rss, r.rss_text))
            if value > LIMIT_S and "noise" not in text]
    if len(judged):
        print(f"\nabove {LIMIT_S} between 20,000 and 50,000 films: {', '.join(over) or 'none'}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help=f"{' and '.join(map(str, SMOKE_SIZES))} films, every "
                        "stage, in a temporary folder (checks that every row was measured)")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="films, for every stage")
    parser.add_argument("--large-sizes", type=int, nargs="*", default=list(LARGE_SIZES),
                        help=f"films, for the stages without a network only ({', '.join(NO_NETWORK)})")
    parser.add_argument("--stages", type=lambda v: [s.strip() for s in v.split(",") if s.strip()],
                        default=list(STAGES), help=f"comma-separated, of: {', '.join(STAGES)}")
    parser.add_argument("--work", type=Path, default=OUT / "data_scale", help="films, manifests and caches")
    parser.add_argument("--out", type=Path, default=OUT / "data_scale.parquet")
    parser.add_argument("--predict-cap", type=int, default=0, help="films in cxr.predict's folder at most (0: N)")
    parser.add_argument("--memory-limit-gib", type=float, default=10.0,
                        help="address space of a stage process (0: none); the machine is shared")
    parser.add_argument("--repeats", type=int, default=1, help="fresh-process runs of every stage and size, rounds "
                        "interleaved; the tables show the median and the range")
    parser.add_argument("--stage-timeout", type=float, default=4 * 3600, help="seconds")
    parser.add_argument("--quiet-wait", type=float, default=60.0, help="seconds to wait at most, before each stage, "
                        "for other users to take under 0.3 of a core (--smoke: 0)")
    parser.add_argument("--stage", type=lambda v: v.split(","), help=argparse.SUPPRESS)  # stages, in this process
    parser.add_argument("--films", type=lambda v: [int(n) for n in v.split(",")], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = [s for s in args.stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(unknown)}: use {', '.join(STAGES)}")
    args.stages = [s for s in STAGES if s in args.stages]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.stage:
        return run_stages_here(args)
    with tempfile.TemporaryDirectory(prefix="data-scale-") if args.smoke else contextlib.nullcontext() as tmp:
        if args.smoke:
            args.sizes, args.large_sizes, args.work, args.quiet_wait = list(SMOKE_SIZES), [], Path(tmp), 0
            args.out = args.work / "data_scale.parquet"
        return run_all(args)


def run_all(args) -> int:
    import pandas as pd

    started = time.perf_counter()
    print(f"command: python benchmarks/bench_data_scale.py {' '.join(sys.argv[1:])}", flush=True)
    steps = plan(args)
    for n, seconds in prepare(args, steps).items():
        print(f"{n:,} films: manifests in {seconds:.1f} s", flush=True)
    rows = []
    # the full run: a fresh process per stage; --smoke: one for all (imports once: it checks the plumbing, its
    # numbers are not the stages' costs)
    groups = [([n], [s]) for n, s in steps] if not args.smoke else [(sorted({n for n, _ in steps}), list(args.stages))]
    # rounds interleaved, so a slow spell of the shared machine does not fall on one size only
    for repeat, (films, stages) in ((r, g) for r in range(args.repeats) for g in groups):
        if args.quiet_wait:
            wait_for_quiet(args.quiet_wait)  # the machine is shared: torch's threads stall behind other users' work
        for row in run_stages(stages, films, args):
            done = row.get("error") or f"{row['wall_s']:.2f} s (process {row['process_s']:.1f} s)"
            print(f"{row['stage']} at {row['films']:,} films: {done}", flush=True)
            rows.append(row | {"repeat": repeat})
        args.out.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_parquet(args.out, index=False)
    frame = pd.DataFrame(rows)
    for column in ("peak_mib", "above_baseline_mib", "children_peak_mib", "children_above_mib", "children",
                   "other_cores"):
        frame[column] = frame.get(column)  # absent where every row failed before measuring
    frame = median_of_repeats(frame)
    print(f"\nmachine: {machine()}; {time.perf_counter() - started:.0f} s in all; rows in {args.out}")
    print("stages: " + "; ".join(f"{name}: {what}" for name, what in STAGES.items() if name in args.stages))
    print_table(frame)
    print_growth(growth(frame))
    if args.smoke:
        check_smoke(frame)
    return 0


def check_smoke(frame) -> None:
    missing = {(n, s) for n in SMOKE_SIZES for s in STAGES} - set(zip(frame["films"], frame["stage"]))
    failed = frame[frame["error"].notna() | ~(frame["wall_s"] > 0) | ~(frame["peak_mib"] > 0)]
    assert not missing and not len(failed), (missing, failed[["stage", "films", "error"]].to_dict("records"))


if __name__ == "__main__":
    sys.exit(main())
