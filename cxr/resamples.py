"""Weights for the patient bootstrap, kept per patient: a resample is a vector of patient counts (how often each
patient was drawn), and a film's weight in it is its patient's count. Metrics read the weights a block at a time,
so memory stays linear in the films however many resamples there are (50,000 films x 2,000 resamples would be
800 MB as a dense float64 matrix)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

BLOCK_VALUES = 1 << 21  # film weights materialised at once (16 MiB of float64)
_DRAW_ROWS = 64  # resamples drawn per call: one call with size=B draws the same rows, with a B x patients int64 peak


@dataclass(frozen=True)
class PatientResamples:
    """drawn[b, j]: how often patient j was drawn in resample b; codes[i]: the patient of film i."""

    drawn: np.ndarray  # (B, patients), the smallest unsigned dtype that holds the counts
    codes: np.ndarray  # (films,)

    @property
    def shape(self) -> tuple[int, int]:
        """(resamples, films), as a dense weight matrix would have."""
        return len(self.drawn), len(self.codes)

    def take(self, rows: slice, films: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Film weights of resamples rows for the films given (indices in film order), float64."""
        return self.drawn[rows][:, self.codes[films]].astype(np.float64)

    def dense(self) -> np.ndarray:
        """(B, films) float64: for small data and tests only."""
        return self.take(slice(None))


@dataclass(frozen=True)
class _DenseWeights:
    """A (B, films) weight matrix given as it is (one row per resample), read through the same interface."""

    values: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.values.shape

    def take(self, rows: slice, films: np.ndarray | slice = slice(None)) -> np.ndarray:
        return self.values[rows][:, films]


Weights = PatientResamples | np.ndarray | None  # None: every film once (the point estimate)


def patient_bootstrap(patients, n_boot: int, seed: int = 0) -> PatientResamples:
    """n_boot resamples of the patients, drawn with replacement, as many as there are: the same draws as
    numpy's multinomial(n, uniform, size=n_boot) from default_rng(seed), drawn in blocks."""
    codes, uniques = pd.factorize(pd.Series(patients), sort=True)
    n = len(uniques)
    rng = np.random.default_rng(seed)
    drawn = np.empty((n_boot, n), dtype=np.uint8)
    for start in range(0, n_boot, _DRAW_ROWS):
        block = rng.multinomial(n, np.full(n, 1.0 / n), size=min(_DRAW_ROWS, n_boot - start))
        if block.size and block.max() > np.iinfo(drawn.dtype).max:  # never seen: a patient drawn 256+ times
            drawn = drawn.astype(np.min_scalar_type(n))
        drawn[start:start + len(block)] = block
    return PatientResamples(drawn, codes.astype(np.intp))


def weights_of(weights: Weights, n_films: int) -> PatientResamples | _DenseWeights:
    """Any accepted form of weights, read through take(rows, films) and shape."""
    if weights is None:
        return _DenseWeights(np.ones((1, n_films)))
    if isinstance(weights, PatientResamples):
        return weights
    return _DenseWeights(np.asarray(weights, dtype=np.float64))


def row_blocks(n_boot: int, n_films: int) -> Iterator[slice]:
    """Slices of resamples whose film weights fit in BLOCK_VALUES."""
    step = max(1, BLOCK_VALUES // max(1, n_films))
    return (slice(start, min(start + step, n_boot)) for start in range(0, n_boot, step))


def column_blocks(n_boot: int, n_films: int) -> Iterator[slice]:
    """Slices of films whose weights in every resample fit in BLOCK_VALUES."""
    step = max(1, BLOCK_VALUES // max(1, n_boot))
    return (slice(start, min(start + step, n_films)) for start in range(0, n_films, step))
