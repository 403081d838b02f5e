"""Chest X-ray pneumonia library: data, models, training, metrics. Never imports ray or optuna."""

from cxr.errors import InputError

__all__ = ["InputError", "load_model"]


def __getattr__(name: str):
    if name == "load_model":  # lazy: `import cxr` stays light (no torch) for CLIs that only need InputError
        from cxr.package import load_model

        return load_model
    raise AttributeError(f"module 'cxr' has no attribute {name!r}")
