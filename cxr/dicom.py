"""DICOM films through pydicom: stored values -> Modality LUT (rescale) -> VOI LUT or window -> MONOCHROME1
inverted, as a float image that cxr.images stretches to 8-bit like any high-bit-depth film.

Compressed transfer syntaxes (JPEG, JPEG-LS, JPEG 2000, RLE) are decoded by pydicom's pylibjpeg plugins:
`pip install -e ".[dicom]"` (pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut, apply_voi_lut

DICOM_SUFFIXES = {".dcm", ".dicom"}


_REQUIRED = ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "PixelData")


def has_dicom_preamble(path: str | Path) -> bool:
    """The 'DICM' marker after the 128-byte preamble (how a DICOM file without a suffix is recognised)."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def read_dicom(path: str | Path, max_pixels: int) -> np.ndarray:
    """The film as a 2-D float array, brighter = denser (display orientation of MONOCHROME2). The header is checked
    (required tags, one grayscale frame, Rows x Columns x NumberOfFrames <= max_pixels) before any pixel is decoded."""
    try:
        ds = pydicom.dcmread(str(path))
    except (pydicom.errors.InvalidDicomError, EOFError, KeyError, TypeError) as exc:  # pydicom's kinds of "broken"
        raise ValueError(f"not a readable DICOM file ({type(exc).__name__}: {exc})") from None
    missing = [tag for tag in _REQUIRED if tag not in ds]
    if missing:
        raise ValueError(f"DICOM file without {', '.join(missing)}: not a decodable image")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    pixels = int(ds.Rows) * int(ds.Columns) * frames
    if frames != 1 or int(ds.SamplesPerPixel) != 1:
        raise ValueError(f"expected one grayscale frame, got {frames} frame(s) of {ds.SamplesPerPixel} sample(s) per pixel")
    if pixels > max_pixels:
        raise ValueError(f"{ds.Rows} x {ds.Columns} pixels exceed the limit of {max_pixels:,}: raise max_pixels "
                         "(--max-pixels) if the film is genuine")
    try:
        stored = ds.pixel_array
    except (RuntimeError, NotImplementedError, ValueError, AttributeError) as exc:  # compressed without a decoder, or broken
        syntax = getattr(ds.file_meta, "TransferSyntaxUID", "unknown")
        raise ValueError(f"cannot decode transfer syntax {getattr(syntax, 'name', syntax)} ({str(exc).splitlines()[0][:200]}); "
                         'compressed DICOM needs pip install -e ".[dicom]" (pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg)') from None
    if stored.ndim != 2:
        raise ValueError(f"expected one grayscale frame, got pixel data of shape {stored.shape}")
    values = apply_voi_lut(apply_modality_lut(stored, ds), ds, index=0).astype(np.float32)
    if ds.get("PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
        values = values.max() + values.min() - values  # MONOCHROME1: low values are white
    return values
