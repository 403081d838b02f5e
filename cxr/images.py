"""Decode once: every image of a manifest as grayscale uint8 in one memory-mapped .npy cache.

Images are resized straight to size x size (aspect ratio NOT kept, as in both reference projects and
the 224 px Kaggle copy): chest films are close to square and cropping would cut lung bases or apices.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.lib.format import open_memmap
from PIL import Image, UnidentifiedImageError

from cxr.dicom import DICOM_SUFFIXES, is_dicom, read_dicom
from cxr.errors import InputError

FILM_SUFFIXES = frozenset({".jpeg", ".jpg", ".png"} | DICOM_SUFFIXES)  # what data folders and predict pick up
_PARALLEL_MIN_IMAGES = 512  # below this, starting a process pool costs more than it saves
_CHUNK = 256  # films per decode task: big enough to amortise the pool, small enough to spread over workers


def default_cache_dir() -> Path:
    return Path(os.environ.get("CXR_CACHE_DIR", Path.home() / ".cache" / "cxr"))


def load_images(
    paths: pd.Series | list[str], size: int, cache_dir: str | Path | None = None, workers: int | None = None
) -> np.ndarray:
    """(N, size, size) uint8 array of the images, decoded once and memory-mapped from the cache after."""
    paths = [str(p) for p in paths]
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"images-{_cache_key(paths, size)}-{size}px.npy"
    if not target.exists():
        _decode_all(paths, size, target, workers or os.cpu_count() or 1)
    return np.load(target, mmap_mode="r")


def _cache_key(paths: list[str], size: int) -> str:
    """Changes when any file is added, removed, replaced or touched."""
    digest = hashlib.sha256(str(size).encode())
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def _decode_all(paths: list[str], size: int, target: Path, workers: int) -> None:
    tmp = target.with_suffix(f".{os.getpid()}.tmp.npy")
    out = open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size))
    chunks = [range(i, min(i + _CHUNK, len(paths))) for i in range(0, len(paths), _CHUNK)]
    bad: list[tuple[str, str]] = []  # (path, reason)
    if workers > 1 and len(paths) >= _PARALLEL_MIN_IMAGES:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = pool.map(_decode_chunk, [[paths[i] for i in c] for c in chunks], [size] * len(chunks))
            for chunk, (array, failed) in zip(chunks, results):
                out[chunk.start : chunk.stop] = array
                bad += failed
    else:
        for chunk in chunks:
            array, failed = _decode_chunk([paths[i] for i in chunk], size)
            out[chunk.start : chunk.stop] = array
            bad += failed
    out.flush()
    del out
    if bad:
        tmp.unlink()
        path, reason = bad[0]
        raise InputError(
            f"{len(bad)} unreadable image(s), e.g. {path} ({reason}): delete or replace them and run again "
            "(nothing is skipped silently, so the manifest stays what was trained on)"
        )
    os.replace(tmp, target)


def _decode_chunk(paths: list[str], size: int) -> tuple[np.ndarray, list[tuple[str, str]]]:
    array = np.zeros((len(paths), size, size), dtype=np.uint8)
    failed = []
    for i, path in enumerate(paths):
        try:
            array[i] = decode(path, size)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            failed.append((path, f"{type(exc).__name__}: {str(exc)[:300]}"))
    return array, failed


def decode(path: str, size: int) -> np.ndarray:
    """One image (JPEG, PNG, 16-bit PNG or DICOM) as a (size, size) grayscale uint8 array."""
    if is_dicom(path):
        return resize_array(read_dicom(path), size)
    with Image.open(path) as image:
        image.draft("L", (size, size))  # JPEG: let libjpeg downscale while decoding
        gray = _gray(image).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(gray, dtype=np.uint8)


def _gray(image: Image.Image) -> Image.Image:
    """8-bit grayscale; 16-bit/int/float PNGs stretched by their own range, where convert("L") would clip at 255."""
    if image.mode.startswith("I") or image.mode == "F":
        return _stretch_to_8bit(np.asarray(image, dtype=np.float64))
    return image.convert("L")


def _stretch_to_8bit(values: np.ndarray) -> Image.Image:
    """High bit-depth film -> 8-bit by its own min..max (12-bit data often sits in 16-bit files)."""
    lo, hi = float(values.min()), float(values.max())
    scaled = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
    return Image.fromarray(np.round(scaled).astype(np.uint8))


def resize_array(values: np.ndarray, size: int) -> np.ndarray:
    """A 2-D grayscale array (uint8 as is; any other dtype stretched by its own min..max) as (size, size) uint8."""
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale array, got shape {values.shape}")
    image = Image.fromarray(values) if values.dtype == np.uint8 else _stretch_to_8bit(values.astype(np.float64))
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def read_film(path: str) -> np.ndarray:
    """The film at its own resolution as grayscale uint8 (for overlays); high bit depths stretched as in decode."""
    if is_dicom(path):
        return np.asarray(_stretch_to_8bit(read_dicom(path)), dtype=np.uint8)
    with Image.open(path) as image:
        return np.asarray(_gray(image), dtype=np.uint8)

