"""The one way in for every film (training, predict, the data audit, Grad-CAM), and decode once: every film of a
manifest as grayscale uint8 in one memory-mapped .npy cache.

A film is decoded by the decoder its suffix names (.png: PNG, .jpg/.jpeg: JPEG, .dcm/.dicom: DICOM; a file without a
suffix only when it carries the DICOM preamble), after its pixel count was read from the header and checked against
max_pixels (MAX_PIXELS unless raised). Every failure is a ValueError naming the problem.

Images are resized straight to size x size (aspect ratio NOT kept, as in both reference projects and
the 224 px Kaggle copy): chest films are close to square and cropping would cut lung bases or apices.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import itertools
import multiprocessing
import os
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

import cxr.dicom
from cxr.dicom import DICOM_SUFFIXES, has_dicom_preamble, read_dicom
from cxr.errors import InputError

if TYPE_CHECKING:  # pandas only for the annotation: every pool worker imports this module, so it stays light
    import pandas as pd

PIL_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}  # suffix -> the only PIL decoder tried
FILM_SUFFIXES = frozenset(PIL_FORMATS) | DICOM_SUFFIXES  # what data folders and predict pick up
# 60 megapixels (e.g. 7750 x 7750): above any chest film (detectors give up to ~4300 x 4300); a header claiming more
# is refused before a pixel is decoded. Raise it with max_pixels= (--max-pixels in the CLIs).
MAX_PIXELS = 60_000_000
_PARALLEL_MIN_IMAGES = 512  # below this (a few seconds of decoding), the pool's ~0.4 s start is not worth it
_CHUNK = 256  # films per decode task: big enough to amortise the pool, small enough to spread over workers
# The code and the libraries that turn a file into pixels: a change to any of them must not reuse older pixels.
_DECODING_MODULES = (__file__, cxr.dicom.__file__)
_DECODING_LIBRARIES = ("pillow", "pydicom", "numpy", "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg")
# forkserver, not Linux's default fork: a child forked from a process whose torch (or OpenMP) thread pool has run
# hangs once it uses that pool; the fork server is a clean process started on first use, and forking a worker
# from it is cheaper than spawn's fresh interpreter per worker. As with spawn, each worker imports the main module:
# a script that decodes keeps its work under `if __name__ == "__main__":`.
_POOL_CONTEXT = multiprocessing.get_context("forkserver")


def default_cache_dir() -> Path:
    return Path(os.environ.get("CXR_CACHE_DIR", Path.home() / ".cache" / "cxr"))


def load_images(
    paths: pd.Series | list[str], size: int, cache_dir: str | Path | None = None, workers: int | None = None,
    max_pixels: int = MAX_PIXELS,
) -> np.ndarray:
    """(N, size, size) uint8 array of the images, decoded once and memory-mapped from the cache after."""
    paths = [str(p) for p in paths]
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"images-{_cache_key(paths, size)}-{size}px.npy"
    if not target.exists():
        _decode_all(paths, size, target, workers or os.cpu_count() or 1, max_pixels)
    return np.load(target, mmap_mode="r")


def _cache_key(paths: list[str], size: int) -> str:
    """Changes when any file is added, removed, replaced or touched, and when the decoders change."""
    digest = hashlib.sha256(f"{size}\0{decoder_fingerprint()}\n".encode())
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


@functools.cache
def decoder_fingerprint() -> str:
    """What decodes (part of the cache key), computed once per process: the source of the decoding modules and the
    versions of the installed decoding libraries."""
    digest = hashlib.sha256()
    for path in _DECODING_MODULES:
        digest.update(Path(path).read_bytes())
    for name in _DECODING_LIBRARIES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):  # an optional plugin not installed
            digest.update(f"{name}=={importlib.metadata.version(name)}\n".encode())
    return digest.hexdigest()[:16]


def map_in_processes(fn: Callable[[Sequence], Any], items: Sequence, chunksize: int, workers: int) -> Iterator[Any]:
    """fn(chunk) for each run of `chunksize` consecutive items, in order, in `workers` processes (in this one when
    workers <= 1); fn must pickle (module level, or a functools.partial of such). Two chunks per worker are in flight
    at most, so results wait in memory about two per worker however many items there are."""
    chunks = (items[i : i + chunksize] for i in range(0, len(items), chunksize))
    if workers <= 1:
        yield from map(fn, chunks)
        return
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=_POOL_CONTEXT)
    try:
        pending = deque(pool.submit(fn, chunk) for chunk in itertools.islice(chunks, 2 * workers))
        while pending:
            result = pending.popleft().result()
            pending.extend(pool.submit(fn, chunk) for chunk in itertools.islice(chunks, 1))
            yield result
    finally:
        pool.shutdown(cancel_futures=True)  # a failure or an interrupt: queued chunks are dropped, not decoded


def _decode_all(paths: list[str], size: int, target: Path, workers: int, max_pixels: int) -> None:
    tmp = target.with_suffix(f".{os.getpid()}.tmp.npy")
    try:
        bad = _decode_into(tmp, paths, size, workers, max_pixels)
    except BaseException:
        tmp.unlink(missing_ok=True)  # no temporary file outlives a failure, an interrupt included
        raise
    if bad:
        tmp.unlink()
        path, reason = bad[0]
        raise InputError(
            f"{len(bad)} unreadable image(s), e.g. {path} ({reason}): delete or replace them and run again "
            "(nothing is skipped silently, so the manifest stays what was trained on)"
        )
    os.replace(tmp, target)


def _decode_into(tmp: Path, paths: list[str], size: int, workers: int, max_pixels: int) -> list[tuple[str, str]]:
    """Decode every film into the .npy file tmp, written front to back as the chunks come (the films are never all in
    memory, nor in mapped pages); the (path, reason) of each film that failed."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
              "shape": (len(paths), size, size)}
    workers = workers if len(paths) >= _PARALLEL_MIN_IMAGES else 1
    bad: list[tuple[str, str]] = []
    with open(tmp, "wb") as out:
        np.lib.format.write_array_header_1_0(out, header)  # what np.save writes for a header this short
        for array, failed in map_in_processes(functools.partial(_decode_chunk, size=size, max_pixels=max_pixels),
                                              paths, _CHUNK, workers):
            out.write(array.data)
            bad += failed
    return bad


def _decode_chunk(paths: list[str], size: int, max_pixels: int) -> tuple[np.ndarray, list[tuple[str, str]]]:
    array = np.zeros((len(paths), size, size), dtype=np.uint8)
    failed = []
    for i, path in enumerate(paths):
        try:
            array[i] = decode(path, size, max_pixels)
        except (OSError, ValueError) as exc:
            failed.append((path, f"{type(exc).__name__}: {str(exc)[:300]}"))
    return array, failed


def decode(path: str, size: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """One film as a (size, size) grayscale uint8 array."""
    if _is_dicom(path):
        return resize_array(read_dicom(path, max_pixels), size)
    with _open_pil(path, max_pixels) as image:
        image.draft("L", (size, size))  # JPEG: let libjpeg downscale while decoding
        gray = _gray(image).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(gray, dtype=np.uint8)


def read_film(path: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The film at its own resolution as grayscale uint8 (overlays, the data audit); high bit depths stretched."""
    if _is_dicom(path):
        return np.asarray(_stretch_to_8bit(read_dicom(path, max_pixels)), dtype=np.uint8)
    with _open_pil(path, max_pixels) as image:
        return np.asarray(_gray(image), dtype=np.uint8)


def _is_dicom(path: str) -> bool:
    suffix = Path(path).suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return True
    if suffix in PIL_FORMATS:
        return False
    if suffix == "" and has_dicom_preamble(path):
        return True
    raise ValueError(f"unsupported file type {suffix or '(no suffix, no DICOM preamble)'}: films are "
                     f"{'/'.join(sorted(FILM_SUFFIXES))}, or DICOM without a suffix")


def _open_pil(path: str, max_pixels: int) -> Image.Image:
    """The film opened by the one decoder its suffix names (a TIFF or EPS named .png is refused, never decoded),
    its size read from the header and checked before any pixel is decoded."""
    fmt = PIL_FORMATS[Path(path).suffix.lower()]
    try:
        with _pil_limit(max_pixels):
            image = Image.open(path, formats=[fmt])
    except UnidentifiedImageError:
        raise ValueError(f"not a {fmt} file (the suffix names the decoder; the content is something else)") from None
    except Image.DecompressionBombError as exc:
        raise ValueError(f"the header claims more pixels than PIL decodes ({exc})") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ValueError(f"{width} x {height} pixels exceed the limit of {max_pixels:,}: raise max_pixels "
                         "(--max-pixels) if the film is genuine")
    return image


@contextlib.contextmanager
def _pil_limit(max_pixels: int):
    """PIL's own bomb check (a warning above its limit, an error above twice it) yields to ours: raised with it,
    its warning silenced, since the size check after Image.open decides."""
    default = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max(default or 0, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = default


def _gray(image: Image.Image) -> Image.Image:
    """8-bit grayscale; 16-bit/int/float PNGs stretched by their own range, where convert("L") would clip at 255."""
    if image.mode.startswith("I") or image.mode == "F":
        return _stretch_to_8bit(np.asarray(image, dtype=np.float32))
    gray = image.convert("L")
    _check_range(*gray.getextrema())
    return gray


def _check_range(lo: float, hi: float) -> None:
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError("pixel data holds non-finite values (NaN or infinity)")
    if hi <= lo:
        raise ValueError(f"pixel data is constant ({lo:g} everywhere): no film to read")


def _stretch_to_8bit(values: np.ndarray) -> Image.Image:
    """High bit-depth film -> 8-bit by its own min..max (12-bit data often sits in 16-bit files); in float32, in
    place (callers hand over an array of their own). Non-finite or constant pixel data is no film."""
    values = np.asarray(values, dtype=np.float32)
    lo, hi = float(values.min()), float(values.max())
    _check_range(lo, hi)
    values -= lo
    values *= 255.0 / (hi - lo)
    return Image.fromarray(np.round(values, out=values).astype(np.uint8))


def resize_array(values: np.ndarray, size: int) -> np.ndarray:
    """A 2-D grayscale array (uint8 as is; any other dtype stretched by its own min..max) as (size, size) uint8."""
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale array, got shape {values.shape}")
    if values.dtype == np.uint8:
        _check_range(int(values.min()), int(values.max()))
        image = Image.fromarray(values)
    else:
        image = _stretch_to_8bit(values.astype(np.float32))
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)

