"""cxr.dataset: manifest + cached images as one in-memory data set."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxr.dataset import CxrData, load_dataset
from cxr.images import decode


def test_load_dataset_rows_match_manifest(synthetic_data: CxrData) -> None:
    data = synthetic_data
    assert data.images.shape == (len(data.manifest), 64, 64) and data.images.dtype == np.uint8
    assert data.image_size == 64
    np.testing.assert_array_equal(data.labels, data.manifest["label"].to_numpy())
    for i in (0, len(data.manifest) // 2, len(data.manifest) - 1):
        np.testing.assert_array_equal(data.images[i], decode(data.manifest["path"][i], 64))


def test_indices_partition_the_rows(synthetic_data: CxrData) -> None:
    parts = [synthetic_data.indices(split) for split in ("train", "val", "test")]
    assert all(len(p) for p in parts)
    joined = np.sort(np.concatenate(parts))
    np.testing.assert_array_equal(joined, np.arange(len(synthetic_data.manifest)))
    assert (synthetic_data.manifest["split"].to_numpy()[parts[1]] == "val").all()


def test_data_for_the_object_store_is_a_plain_view_of_the_cache(synthetic_data: CxrData) -> None:
    shipped = synthetic_data.for_object_store()
    assert isinstance(synthetic_data.images, np.memmap)
    assert type(shipped.images) is np.ndarray and shipped.images.flags["C_CONTIGUOUS"]  # pickled out of band, as bytes
    assert np.shares_memory(shipped.images, synthetic_data.images)  # no copy in this process's RAM
    np.testing.assert_array_equal(shipped.images, synthetic_data.images)
    assert shipped.manifest is synthetic_data.manifest


def test_load_dataset_uses_the_cache_dir_and_seed(synthetic_root: Path, tmp_path: Path) -> None:
    a = load_dataset(synthetic_root, image_size=32, seed=0, cache_dir=tmp_path)
    b = load_dataset(synthetic_root, image_size=32, seed=1, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 1  # same files, same size: one entry, whatever the split
    np.testing.assert_array_equal(a.images, b.images)
    assert a.manifest["split"].tolist() != b.manifest["split"].tolist()


def test_decoded_at_another_size_keeps_the_films_and_splits(synthetic_data: CxrData) -> None:
    """What the final stage does when the best trial's size is below the size a search with several decoded at: its
    members see films decoded as cxr.predict decodes them."""
    smaller = synthetic_data.decoded_at(32)  # the session's cache folder (CXR_CACHE_DIR)
    assert smaller.manifest is synthetic_data.manifest and smaller.image_size == 32
    for i in (0, len(smaller.manifest) - 1):
        np.testing.assert_array_equal(smaller.images[i], decode(smaller.manifest["path"][i], 32))
