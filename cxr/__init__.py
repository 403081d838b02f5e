"""Chest X-ray pneumonia library: data, models, training, metrics. Never imports ray or optuna."""

from cxr.errors import InputError

__all__ = ["InputError"]
