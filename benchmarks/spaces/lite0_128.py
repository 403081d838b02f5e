"""Real-data benchmark space: EfficientNet-Lite0 (ImageNet weights via --weights-dir) at 128 px, 3 epochs.

Small enough for a 2-core CPU: only the backbone, image size, batch size and epoch budget are fixed;
the optimisation keys are searched over the same ranges as search_spaces/full.py (lr a little narrower).
"""

from cxr.models import count_blocks
from search_spaces._schedulers import suggest_scheduler

BACKBONE = "tf_efficientnet_lite0"


def space(trial):
    trial.suggest_float("lr", 1e-4, 3e-3, log=True)
    suggest_scheduler(trial, ["cosine", "onecycle", "step"])
    trial.suggest_float("dropout", 0.0, 0.4)
    trial.suggest_int("unfrozen_blocks", 0, count_blocks(BACKBONE))
    trial.suggest_float("augment", 0.0, 0.6)
    return {
        "backbone": BACKBONE, "pretrained": True, "image_size": 128, "batch_size": 64,
        "epochs": 3, "early_stopping_patience": 0,
    }
