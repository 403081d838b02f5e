"""Shared fixtures: synthetic data made once per session in tmp, the README's demo experiment (run once, read by
every test that only reads results), and the helpers several test modules use (no test module imports another).

Nothing here reads ../shared, and CXR_CACHE_DIR points every test at a temporary cache, so no test writes
to ~/.cache.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr.dataset import CxrData, load_dataset
from cxr.synthetic import create_synthetic

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC_PATIENTS = 200
SYNTHETIC_SIZE = 96
CACHED_SIZE = 64  # image size the session's decoded data set is cached at


LONG_RUNS = ("slow", "benchmark", "scale")  # markers of the end-to-end runs (tens of seconds each)
DEMO_GROUP = "demo"  # the xdist_group of the tests that read the demo; xdist appends "@demo" to their node ids


def _reads_demo(item: pytest.Item) -> bool:
    return "demo" in item.fixturenames


def pytest_configure(config: pytest.Config) -> None:
    """In a pytest-xdist worker: its share of the cores for torch, here and in the commands it starts (Ray does the
    same for a trial, from --cpus-per-trial). torch's default, a thread per core in every worker, leaves the threads
    of one waiting on the other's (the engine's fit fixture took 86 s beside the other worker instead of 15 s)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The suite runs in pytest-xdist workers (pyproject's addopts): the long runs go first, so the workers are not
    left waiting on one of them at the end, and every test that reads the demo's experiment runs in one worker, so
    the demo runs once."""
    items.sort(key=lambda item: not any(item.get_closest_marker(m) for m in LONG_RUNS))
    for item in items:
        if _reads_demo(item):
            item.add_marker(pytest.mark.xdist_group(DEMO_GROUP))


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 200-patient synthetic chest_xray folder (train/, val/, test/) with 96 px JPEGs; treat as read-only."""
    return create_synthetic(
        tmp_path_factory.mktemp("kaggle") / "chest_xray", n_patients=SYNTHETIC_PATIENTS, size=SYNTHETIC_SIZE
    )


@pytest.fixture(scope="session")
def session_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cxr-cache")


@pytest.fixture(autouse=True)
def _temporary_cache(monkeypatch: pytest.MonkeyPatch, session_cache_dir: Path) -> None:
    """Every test that leaves cache_dir out still writes under tmp, never to ~/.cache/cxr."""
    monkeypatch.setenv("CXR_CACHE_DIR", str(session_cache_dir))


@pytest.fixture(scope="session")
def synthetic_data(synthetic_root: Path, session_cache_dir: Path) -> CxrData:
    """The synthetic set scanned (seed 0) and decoded at 64 px; shared, so tests must not write into it."""
    return load_dataset(synthetic_root, image_size=CACHED_SIZE, cache_dir=session_cache_dir)


def _run_module(module: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def run_cli():
    """python -m tune.run as a user runs it, in a subprocess (a private local Ray cluster each)."""
    return lambda *args, timeout=600: _run_module("tune.run", *args, timeout=timeout)


@pytest.fixture(scope="session")
def run_module():
    """python -m <module> (cxr.predict, cxr.export) in a subprocess."""
    return _run_module


@pytest.fixture(scope="session")
def run_benchmark():
    """python benchmarks/<script> <args> from the repository root; asserts it exited 0 and returns its stdout."""
    def run(script: str, *args: str, timeout: float = 600) -> str:
        proc = subprocess.run([sys.executable, f"benchmarks/{script}", *args], cwd=REPO, capture_output=True,
                              text=True, timeout=timeout)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    return run


@pytest.fixture
def main_in_process(capsys: pytest.CaptureFixture):
    """tune.run.main in this process (no Python start-up: for answers that come before Ray starts): (exit code,
    stderr)."""
    from tune.run import main

    def run(*args: str) -> tuple[int, str]:
        saved = dict(os.environ)  # main sets Ray's loopback switch for a local run: keep it out of later tests
        try:
            code = main(list(args))
        finally:
            os.environ.clear()
            os.environ.update(saved)
        return code, capsys.readouterr().err

    return run


def _assert_input_error(code: int, stderr: str, *words: str) -> None:
    """Exit 2, no traceback, and the last stderr line is our one-line message naming the problem."""
    assert code == 2, stderr[-2000:]
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), stderr[-2000:]
    for word in words:
        assert word in last, last


@pytest.fixture(scope="session")
def assert_input_error():
    return _assert_input_error


def _write_dicom(path: Path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2", window: tuple[float, float] | None = None,
                 slope: float = 1.0, intercept: float = 0.0) -> Path:
    """A minimal single-frame grayscale DICOM file (what a test needs; real films carry many more tags)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, photometric, 0
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits if bits == 8 else 12, (bits if bits == 8 else 12) - 1
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


@pytest.fixture(scope="session")
def write_dicom():
    return _write_dicom


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height 8-bit gray pixels, with almost no data: a decompression bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="session")
def png_header():
    return _png_header


def _made_up_members(data: CxrData, config, k: int = 3) -> list:
    """k final-stage members of untrained config.backbone weights whose val and test probabilities are made up
    (pneumonia scored higher, with noise; mirrored a little differently; under each perturbation of the robustness
    bank noisier the stronger it is), seeds 100, 101, ..."""
    from cxr.ensemble import Member
    from cxr.models import create_model
    from cxr.shift import ROBUSTNESS_BANK

    rng = np.random.default_rng(0)
    out = []
    for i in range(k):
        state = {n: t.clone() for n, t in create_model(config.backbone, pretrained=False).state_dict().items()}
        probs = {}
        for split in ("val", "test"):
            labels = data.labels[data.indices(split)]
            probs[split] = np.clip(0.3 + 0.4 * labels + rng.normal(0, 0.15, len(labels)), 0.01, 0.99)
            probs[f"{split}_mirrored"] = np.clip(probs[split] + rng.normal(0, 0.05, len(labels)), 0.01, 0.99)
            for p in ROBUSTNESS_BANK:
                for key in (split, f"{split}_mirrored"):
                    shifted = probs[key] + rng.normal(0, 0.1 * p.strength, len(labels))
                    probs[key.replace(split, f"{split}@{p.name}", 1)] = np.clip(shifted, 0.01, 0.99)
        out.append(Member(100 + i, 2, state, [{"epoch": 1}, {"epoch": 2}], probs))
    return out


@pytest.fixture(scope="session")
def made_up_members():
    return _made_up_members


@dataclass(frozen=True)
class Assembled:
    members: list
    model: object  # cxr.package.FinalModel
    metrics: dict  # as metrics.json holds them (final_stage_s and members_s included)
    predictions: object  # pandas DataFrame
    history: object


@pytest.fixture(scope="session")
def assembled(synthetic_data: CxrData) -> Assembled:
    """cxr.ensemble.assemble and assess_robustness, as the final stage runs them, on three made-up members of the
    synthetic set (200 resamples); treat as read-only."""
    from cxr.config import TrainConfig
    from cxr.ensemble import assemble, assess_robustness

    config = TrainConfig(backbone="test_efficientnet", pretrained=False, image_size=16, target_recall=0.95)
    members = _made_up_members(synthetic_data, config)
    model, metrics, predictions, history = assemble(config, members, synthetic_data, n_boot=200)
    robustness = assess_robustness(members, synthetic_data, predictions, metrics)
    return Assembled(members, model, {**metrics, "robustness": robustness, "final_stage_s": 1.0, "members_s": 0.8}, predictions, history)


def _final_model(folder: Path, tta: bool = False, contrast_norm: str = "none") -> Path:
    """A saved two-member final/ folder of untrained test_efficientnet members at 32 px (seeds 1 and 2)."""
    from cxr.config import TrainConfig
    from cxr.models import create_model
    from cxr.package import FinalModel

    config = TrainConfig(backbone="test_efficientnet", pretrained=False, image_size=32, contrast_norm=contrast_norm)
    members = [create_model(config.backbone, pretrained=False).eval() for _ in range(2)]
    return FinalModel(config, members, [1, 2], threshold=0.5, temperature=1.3, tta=tta).save(folder)


@pytest.fixture(scope="session")
def final_model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One saved final/ folder for the tests that only read it (predict, export)."""
    return _final_model(tmp_path_factory.mktemp("model") / "final")


@pytest.fixture(scope="session")
def final_model_with():
    """final_model_with(folder, tta=..., contrast_norm=...): a final/ folder like final_model_folder's, otherwise made."""
    return _final_model


@dataclass(frozen=True)
class FinishedRun:
    folder: Path  # results/<name>
    stdout: str
    home: Path  # the run's own HOME (it starts with no ~/.ray)
    listening: set[tuple[str, str]]  # (process name, local address) of every TCP socket its processes listened on


@pytest.fixture(scope="session")
def demo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, run_cli) -> FinishedRun:
    """The README's demo command (smoke space, synthetic data, ASHA, 8 trials, 3 final members) with --mlflow as its
    "Track in MLflow" says (the default store: <results>/mlflow.db), run once for every test that reads its results.
    A test that changes an experiment copies it first (copy_experiment)."""
    if getattr(request.config.option, "loadgroup", False):  # an xdist worker: its readers must all be in this one
        lost = [i.nodeid for i in request.session.items if _reads_demo(i) and not i.nodeid.endswith(f"@{DEMO_GROUP}")]
        if lost:
            pytest.fail(f"pytest-xdist's groups were lost ({lost[0]} has none), so the demo would run in every worker: "
                        "install pytest below 9.2 (pytest-dev/pytest-xdist#1386; pip install -e '.[dev]') or run with -n 0")
    results, cache, home = (tmp_path_factory.mktemp(n) for n in ("results", "demo-cache", "demo-home"))
    args = ("--space", "smoke", "--dataset", "synthetic", "--mlflow", "--results-dir", str(results), "--name", "demo",
            "--cache-dir", str(cache))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))} | {"HOME": str(home)}
    with subprocess.Popen([sys.executable, "-m", "tune.run", *args], cwd=REPO, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        listening, out = set(), ([], [])
        readers = [threading.Thread(target=lambda s, o: o.extend(s), args=(s, o)) for s, o in zip((proc.stdout, proc.stderr), out)]
        for r in readers:
            r.start()
        while proc.poll() is None:  # Ray's processes come and go: look twice a second
            listening |= _listening_sockets(proc.pid)
            time.sleep(0.5)
        for r in readers:
            r.join()
    stdout, stderr = ("".join(o) for o in out)
    assert proc.returncode == 0, stderr[-4000:]
    return FinishedRun(results / "demo", stdout, home, listening)


def _listening_sockets(root: int) -> set[tuple[str, str]]:
    """(process name, local address) of the TCP sockets that root's process tree listens on, from `ss -ltnpH`."""
    tree, parents = {root}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" (", 1)
        except OSError:
            continue
        parents[int(pid)] = int(rest.rsplit(") ", 1)[1].split()[1])
    grew = True
    while grew:
        new = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= new
        grew = bool(new)
    found = set()
    for line in subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout.splitlines():
        local = line.split()[3]
        for name, pid in re.findall(r'\("([^"]+)",pid=(\d+)', line):
            if int(pid) in tree:
                found.add((name, local))
    return found


@pytest.fixture
def copy_experiment(tmp_path: Path):
    """A private copy of an experiment folder under tmp_path/results, for tests that extend or resume it."""
    def copy(experiment: FinishedRun) -> Path:
        target = tmp_path / "results" / experiment.folder.name
        shutil.copytree(experiment.folder, target)
        return target

    return copy
