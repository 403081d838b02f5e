"""cxr.images: decode once into a memory-mapped cache; later loads read the cache only."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cxr.dicom
import cxr.images
from cxr.errors import InputError
from cxr.images import decode, decoder_fingerprint, default_cache_dir, load_images, resize_array


def _write(path: Path, array: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return str(path)


def _gradients(folder: Path, n: int = 6, size: int = 40, suffix: str = ".png") -> list[str]:
    rng = np.random.default_rng(0)
    return [_write(folder / f"img{i}{suffix}", rng.integers(0, 256, (size, size + 7), dtype=np.uint8)) for i in range(n)]


def _forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args, **kwargs):
        raise AssertionError("decoded an image although the cache holds it")

    monkeypatch.setattr(cxr.images, "decode", boom)
    monkeypatch.setattr(cxr.images, "_decode_chunk", boom)


def _cache_files(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.npy"))


def test_decode_grayscale_square_uint8(tmp_path: Path) -> None:
    rgb = np.zeros((30, 50, 3), np.uint8)
    rgb[..., 1] = 200
    rgb[0, 0] = 0  # not constant: a constant film is refused
    out = decode(_write(tmp_path / "rgb.png", rgb), 16)
    assert out.shape == (16, 16) and out.dtype == np.uint8
    assert abs(int(out.mean()) - round(200 * 0.587)) <= 2  # ITU-R 601 luma of pure green


def test_decode_16_bit_png_is_not_clipped(tmp_path: Path) -> None:
    # a 12-bit film stored in a 16-bit PNG: a left-to-right ramp must stay a ramp, not turn white
    ramp = np.tile(np.linspace(0, 4095, 64), (64, 1)).astype(np.uint16)
    path = _write(tmp_path / "film16.png", ramp)
    assert Image.open(path).mode.startswith("I;16")
    out = decode(path, 32).astype(int)
    assert out[:, 0].mean() < 20 and out[:, -1].mean() > 235
    assert 100 < out[:, 16].mean() < 156  # mid-grey mid-ramp
    assert (np.diff(out.mean(axis=0)) >= 0).all()


def test_first_load_matches_decode_and_second_load_decodes_nothing(tmp_path: Path, monkeypatch) -> None:
    paths, cache = _gradients(tmp_path / "img"), tmp_path / "cache"
    first = load_images(paths, 24, cache_dir=cache)
    assert first.shape == (len(paths), 24, 24) and first.dtype == np.uint8
    for i, path in enumerate(paths):
        np.testing.assert_array_equal(first[i], decode(path, 24))
    first = np.array(first)
    _forbid_decoding(monkeypatch)
    second = load_images(paths, 24, cache_dir=cache)
    np.testing.assert_array_equal(second, first)
    assert isinstance(second, np.memmap)
    assert len(_cache_files(cache)) == 1


def test_other_size_or_order_is_another_entry(tmp_path: Path) -> None:
    paths, cache = _gradients(tmp_path / "img"), tmp_path / "cache"
    small, large = load_images(paths, 16, cache_dir=cache), load_images(paths, 32, cache_dir=cache)
    assert small.shape[-1] == 16 and large.shape[-1] == 32
    reversed_ = load_images(paths[::-1], 16, cache_dir=cache)
    np.testing.assert_array_equal(reversed_, small[::-1])
    assert len(_cache_files(cache)) == 3


def test_touched_or_changed_file_gives_a_new_entry(tmp_path: Path, monkeypatch) -> None:
    paths, cache = _gradients(tmp_path / "img"), tmp_path / "cache"
    before = np.array(load_images(paths, 24, cache_dir=cache))
    stat = os.stat(paths[2])
    os.utime(paths[2], ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))  # touched, same pixels
    touched = load_images(paths, 24, cache_dir=cache)
    np.testing.assert_array_equal(touched, before)
    assert len(_cache_files(cache)) == 2
    _write(Path(paths[2]), np.tile(np.arange(47, dtype=np.uint8), (40, 1)))  # changed pixels
    changed = load_images(paths, 24, cache_dir=cache)
    assert len(_cache_files(cache)) == 3
    np.testing.assert_array_equal(changed[2], decode(paths[2], 24))
    assert not np.array_equal(changed[2], before[2])
    np.testing.assert_array_equal(np.delete(changed, 2, axis=0), np.delete(before, 2, axis=0))


def test_a_cache_made_by_other_decoders_is_not_read(tmp_path: Path, monkeypatch) -> None:
    paths, cache = _gradients(tmp_path / "img", n=3), tmp_path / "cache"
    decoded = []

    def counted(path, *args):
        decoded.append(path)
        return decode(path, *args)

    monkeypatch.setattr(cxr.images, "decode", counted)
    first = np.array(load_images(paths, 16, cache_dir=cache, workers=1))
    monkeypatch.setattr(cxr.images, "decoder_fingerprint", lambda: "another decoder version")
    load_images(paths, 16, cache_dir=cache, workers=1)
    assert len(decoded) == 2 * len(paths) and len(_cache_files(cache)) == 2
    monkeypatch.setattr(cxr.images, "decoder_fingerprint", decoder_fingerprint)
    _forbid_decoding(monkeypatch)
    np.testing.assert_array_equal(load_images(paths, 16, cache_dir=cache), first)


@pytest.mark.parametrize("change", ["code", "library"])
def test_the_decoder_fingerprint_follows_the_decoding_code_and_libraries(tmp_path: Path, monkeypatch, change) -> None:
    fingerprint = decoder_fingerprint.__wrapped__  # past the once-per-process cache
    before = fingerprint()
    if change == "code":  # the DICOM reader edited by one byte
        edited = tmp_path / "dicom.py"
        edited.write_bytes(Path(cxr.dicom.__file__).read_bytes() + b"\n")
        monkeypatch.setattr(cxr.images, "_DECODING_MODULES", (cxr.images.__file__, str(edited)))
    else:
        version = importlib.metadata.version
        monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.0.1" if name == "pillow" else version(name))
    assert fingerprint() != before


def test_process_pool_path_equals_serial_path(tmp_path: Path, monkeypatch) -> None:
    paths = _gradients(tmp_path / "img", n=12, suffix=".jpeg")
    serial = load_images(paths, 24, cache_dir=tmp_path / "serial", workers=1)
    monkeypatch.setattr(cxr.images, "_PARALLEL_MIN_IMAGES", 4)
    parallel = load_images(paths, 24, cache_dir=tmp_path / "parallel", workers=2)
    np.testing.assert_array_equal(parallel, serial)


@pytest.mark.parametrize("damage, workers", [("truncated", 1), ("truncated", 2), ("garbage", 1), ("empty", 1)])
def test_corrupted_image_raises_naming_the_file_and_leaves_no_cache(tmp_path: Path, monkeypatch, damage, workers) -> None:
    paths = _gradients(tmp_path / "img", n=5, suffix=".jpeg")
    good = Path(paths[3]).read_bytes()
    Path(paths[3]).write_bytes({"garbage": b"this is not a JPEG", "truncated": good[: len(good) // 2], "empty": b""}[damage])
    monkeypatch.setattr(cxr.images, "_PARALLEL_MIN_IMAGES", 2)
    with pytest.raises(InputError, match="unreadable image.*img3.jpeg"):
        load_images(paths, 24, cache_dir=tmp_path / "cache", workers=workers)
    assert list((tmp_path / "cache").iterdir()) == []  # nothing half-built is left to be reused


def test_default_cache_dir_follows_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert default_cache_dir() == tmp_path / "elsewhere"
    paths = _gradients(tmp_path / "img", n=2)
    load_images(paths, 16)
    assert len(_cache_files(tmp_path / "elsewhere")) == 1


def test_the_pixel_limit_is_checked_from_the_header_and_can_be_raised(tmp_path: Path, png_header) -> None:
    (tmp_path / "bomb.png").write_bytes(png_header(12000, 12000))
    with pytest.raises(ValueError, match="12000 x 12000 pixels exceed the limit of 60,000,000"):
        decode(str(tmp_path / "bomb.png"), 16)
    (tmp_path / "huge.png").write_bytes(png_header(20000, 20000))  # past PIL's own limit too: refused all the same
    with pytest.raises(ValueError, match="more pixels than PIL decodes"):
        decode(str(tmp_path / "huge.png"), 16)
    (tmp_path / "large.png").write_bytes(png_header(15000, 15000))  # past PIL's limit, within a raised one: decoded
    with pytest.raises(Exception) as raised:  # (as far as the header-only file goes)
        decode(str(tmp_path / "large.png"), 16, max_pixels=300_000_000)
    assert "pixels" not in str(raised.value), raised.value
    small = _write(tmp_path / "small.png", np.arange(40 * 50, dtype=np.uint16).reshape(40, 50).astype(np.uint8))
    with pytest.raises(ValueError, match="exceed the limit of 1,000"):
        decode(small, 16, max_pixels=1000)
    assert decode(small, 16, max_pixels=2000).shape == (16, 16)


@pytest.mark.parametrize("name, save", [
    ("tiff.png", lambda img, p: img.save(p, format="TIFF")),
    ("webp.jpg", lambda img, p: img.save(p, format="WEBP")),
    ("eps.png", lambda img, p: p.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")),
    ("png.jpeg", lambda img, p: img.save(p, format="PNG")),
])
def test_the_decoder_is_the_one_the_suffix_names(tmp_path: Path, name, save) -> None:
    save(Image.fromarray(np.arange(100, dtype=np.uint8).reshape(10, 10)), tmp_path / name)
    with pytest.raises(ValueError, match="the suffix names the decoder"):
        decode(str(tmp_path / name), 16)


def test_other_suffixes_and_suffixless_non_dicom_files_are_refused(tmp_path: Path) -> None:
    png = Path(_write(tmp_path / "x.png", np.arange(16, dtype=np.uint8).reshape(4, 4))).read_bytes()
    for name in ("film.tif", "film"):
        (tmp_path / name).write_bytes(png)
        with pytest.raises(ValueError, match="unsupported file type"):
            decode(str(tmp_path / name), 16)


@pytest.mark.parametrize("pixels, words", [
    (np.full((8, 8), 7, np.uint8), "constant"),
    (np.full((8, 8), 300, np.uint16), "constant"),
    (np.where(np.eye(8, dtype=bool), np.nan, 1.0).astype(np.float32), "non-finite"),
])
def test_constant_or_non_finite_pixel_data_is_no_film(pixels, words) -> None:
    with pytest.raises(ValueError, match=words):
        resize_array(pixels, 16)


def test_an_interrupted_decode_leaves_no_temporary_file(tmp_path: Path, monkeypatch) -> None:
    paths = _gradients(tmp_path / "img", n=3)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cxr.images, "_decode_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_images(paths, 16, cache_dir=tmp_path / "cache", workers=1)
    assert list((tmp_path / "cache").iterdir()) == []


REFUSE_IN_A_FRESH_PROCESS = """
import sys
from cxr.images import decode
def peak_kib():  # VmHWM: this process's own peak RSS (ru_maxrss starts at the parent's RSS at the fork)
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])
before = peak_kib()
try:
    decode(sys.argv[1], 64)
except ValueError as exc:
    print("refused", (peak_kib() - before) // 1024, exc)
"""


def test_refusing_a_film_above_the_limit_costs_under_50_mib(tmp_path: Path, write_dicom, png_header) -> None:
    """Peak RSS of a fresh process (what PIL's and pydicom's buffers count in; tracemalloc misses them)."""
    (tmp_path / "bomb.png").write_bytes(png_header(12000, 12000))  # under PIL's own limit: our check refuses it
    dicom = write_dicom(tmp_path / "bomb.dcm", np.zeros((4, 4), np.uint16))
    import pydicom

    ds = pydicom.dcmread(dicom)
    ds.Rows, ds.Columns = 9000, 9000  # a header claiming 81 megapixels over 16 stored ones
    ds.save_as(str(dicom))
    for film in (tmp_path / "bomb.png", dicom):
        done = subprocess.run([sys.executable, "-c", REFUSE_IN_A_FRESH_PROCESS, str(film)], capture_output=True, text=True,
                              timeout=120)
        words = done.stdout.split()
        assert words[:1] == ["refused"] and "exceed the limit" in done.stdout, done.stdout + done.stderr
        assert int(words[1]) < 50, f"refusing {film.name} grew the peak RSS by {words[1]} MiB"


# A script, not -c: forkserver and spawn workers import the main script, so the torch-calling decoder is theirs too.
DECODE_WITH_TORCH = """
import sys
import numpy as np
import torch
import cxr.images

_decode = cxr.images.decode


def decode_with_torch(path, size, max_pixels):
    torch.randn(256, 256) @ torch.randn(256, 256)  # per-film work on torch's thread pools
    return _decode(path, size, max_pixels)


cxr.images.decode = decode_with_torch

if __name__ == "__main__":
    from PIL import Image

    film = sys.argv[1] + "/film.png"
    Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).save(film)
    torch.set_num_threads(2)
    torch.randn(512, 512) @ torch.randn(512, 512)  # the parent's threads run before the decode pool starts
    images = cxr.images.load_images([film] * cxr.images._PARALLEL_MIN_IMAGES, 16, sys.argv[1] + "/cache", workers=2)
    print("decoded", len(images))
"""


def test_decoding_in_parallel_works_in_a_process_that_has_used_torch(tmp_path: Path) -> None:
    """A pool forked from a process whose torch threads ran hangs at the first torch call in the child."""
    script = tmp_path / "decode_with_torch.py"
    script.write_text(DECODE_WITH_TORCH)
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["decoded", str(cxr.images._PARALLEL_MIN_IMAGES)], done.stdout + done.stderr


DECODE_MANY_IN_A_FRESH_PROCESS = """
import sys
from cxr.images import decode, load_images


def peak_mib():  # VmHWM: this process's own peak RSS (ru_maxrss starts at the parent's RSS at the fork)
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1]) // 1024


decode(sys.argv[1], 128)  # the decoders' own buffers, before the baseline
before = peak_mib()
load_images([sys.argv[1]] * 4096, 128, sys.argv[2], workers=1)
print(peak_mib() - before)
"""


def test_building_a_cache_holds_about_one_chunk_of_films_in_memory(tmp_path: Path) -> None:
    """4096 films of 128 px are 64 MiB of cache: written as decoded, they never all sit in the decoding process."""
    film = _write(tmp_path / "film.png", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64).astype(np.uint8))
    done = subprocess.run([sys.executable, "-c", DECODE_MANY_IN_A_FRESH_PROCESS, film, str(tmp_path / "cache")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) < 24, f"building a 64 MiB cache grew the peak RSS by {done.stdout.strip()} MiB"
