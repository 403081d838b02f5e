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


def is_dicom(path: str | Path) -> bool:
    """By suffix, or by the 'DICM' marker after the 128-byte preamble (files without a suffix)."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def read_dicom(path: str | Path) -> np.ndarray:
    """The film as a 2-D float array, brighter = denser (display orientation of MONOCHROME2)."""
    try:
        ds = pydicom.dcmread(str(path))
    except pydicom.errors.InvalidDicomError as exc:
        raise ValueError(f"not a readable DICOM file ({exc})") from None
    if "PixelData" not in ds:
        raise ValueError("DICOM file without pixel data")
    try:
        stored = ds.pixel_array
    except (RuntimeError, NotImplementedError, ValueError) as exc:  # compressed: no decoder, or a broken frame
        syntax = getattr(ds.file_meta, "TransferSyntaxUID", "unknown")
        raise ValueError(f"cannot decode transfer syntax {getattr(syntax, 'name', syntax)} ({str(exc).splitlines()[0][:200]}); "
                         'compressed DICOM needs pip install -e ".[dicom]" (pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg)') from None
    if stored.ndim != 2:
        raise ValueError(f"expected one grayscale frame, got pixel data of shape {stored.shape}")
    values = apply_voi_lut(apply_modality_lut(stored, ds), ds, index=0).astype(np.float64)
    if ds.get("PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
        values = values.max() + values.min() - values  # MONOCHROME1: low values are white
    return values
