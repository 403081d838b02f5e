"""cxr.dicom through cxr.images.decode: MONOCHROME1/2, 8/16-bit, rescale and window (VOI) applied."""

from __future__ import annotations


import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless

from cxr.dicom import has_dicom_preamble, read_dicom
from cxr.images import MAX_PIXELS, decode, read_film


def _ramp(dtype, top: int) -> np.ndarray:
    return np.tile(np.linspace(0, top, 48).astype(dtype), (40, 1))  # dark left, bright right


@pytest.mark.parametrize("dtype, top", [(np.uint8, 255), (np.uint16, 4095)])
def test_monochrome2_keeps_and_monochrome1_inverts_brightness(tmp_path, write_dicom, dtype, top):
    plain = decode(str(write_dicom(tmp_path / "m2.dcm", _ramp(dtype, top))), 32)
    inverted = decode(str(write_dicom(tmp_path / "m1.dcm", _ramp(dtype, top), photometric="MONOCHROME1")), 32)
    assert plain[:, 0].mean() < 20 and plain[:, -1].mean() > 235  # 12-bit values stretched to the full 8-bit range
    assert inverted[:, 0].mean() > 235 and inverted[:, -1].mean() < 20


def test_window_is_applied(tmp_path, write_dicom):
    pixels = _ramp(np.uint16, 4095)
    windowed = read_dicom(write_dicom(tmp_path / "w.dcm", pixels, window=(1000, 400)), MAX_PIXELS)
    film = decode(str(tmp_path / "w.dcm"), 48)
    assert windowed.min() == windowed[:, :8].min() and (film[:, -10:] == 255).all() and (film[:, :5] == 0).all()
    assert ((film > 0) & (film < 255)).sum() < film.size / 3  # only the window's few columns are grey


def test_rescale_and_detection_without_suffix(tmp_path, write_dicom):
    path = write_dicom(tmp_path / "film", _ramp(np.uint16, 1000), slope=2.0, intercept=-1000)
    assert has_dicom_preamble(path) and read_dicom(path, MAX_PIXELS).min() == -1000 and read_film(str(path)).shape == (40, 48)


def test_unreadable_and_undecodable_files_raise_value_errors(tmp_path, write_dicom):
    (tmp_path / "bad.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"junk")
    with pytest.raises(ValueError):
        read_dicom(tmp_path / "bad.dcm", MAX_PIXELS)
    path = write_dicom(tmp_path / "j2k.dcm", _ramp(np.uint8, 255))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless  # a compressed frame whose bytes are no JPEG 2000
    ds.PixelData = encapsulate([b"not a codestream" * 4])
    ds.save_as(str(path))
    with pytest.raises(ValueError, match="pip install"):
        read_dicom(path, MAX_PIXELS)


@pytest.mark.parametrize("tag", ["Rows", "BitsAllocated", "PixelData"])
def test_a_missing_required_tag_is_named(tmp_path, write_dicom, tag):
    path = write_dicom(tmp_path / "f.dcm", _ramp(np.uint16, 4095))
    ds = pydicom.dcmread(path)
    delattr(ds, tag)
    ds.save_as(str(path))
    with pytest.raises(ValueError, match=f"DICOM file without {tag}"):
        decode(str(path), 16)


def test_the_pixel_limit_is_checked_from_the_dicom_header(tmp_path, write_dicom):
    path = write_dicom(tmp_path / "f.dcm", _ramp(np.uint16, 4095))
    with pytest.raises(ValueError, match="40 x 48 pixels exceed the limit of 1,000"):
        decode(str(path), 16, max_pixels=1000)
    assert decode(str(path), 16, max_pixels=40 * 48).shape == (16, 16)
