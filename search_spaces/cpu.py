"""A space for a machine without a GPU: three small ImageNet-pretrained backbones fine-tuned at 128 px for 4 epochs.

Same searched keys as search_spaces/full.py (lr, scheduler and its parameters, dropout, unfrozen blocks, plus
weight decay, augmentation and weight averaging); batch size is fixed at 32 for CPU memory and speed. Narrow the backbones with
--backbones (e.g. --backbones tf_efficientnet_lite0 when only its weights are at hand).
"""

from cxr.models import count_blocks
from search_spaces._schedulers import suggest_scheduler

BACKBONES = ["tf_efficientnet_lite0", "mobilenetv3_large_100", "resnet18"]

# Reference config: EfficientNet-Lite0 with the last three blocks + head trained, Adam 1e-3 with a cosine schedule
# (a common recipe for fine-tuning a small ImageNet backbone for a few epochs).
BASELINES = [
    {
        "backbone": "tf_efficientnet_lite0", "lr": 1e-3, "weight_decay": 1e-5, "optimizer": "adam",
        "scheduler": "cosine", "warmup_epochs": 0, "dropout": 0.2, "unfrozen_blocks": 3, "augment": 0.3, "ema_decay": 0.0,
    },
]


def space(trial):
    backbone = trial.suggest_categorical("backbone", BACKBONES)
    trial.suggest_float("lr", 1e-4, 3e-3, log=True)
    trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
    trial.suggest_categorical("optimizer", ["adam", "adamw"])
    suggest_scheduler(trial, ["cosine", "onecycle", "step"])
    trial.suggest_float("dropout", 0.0, 0.5)
    trial.suggest_categorical("ema_decay", [0.0, 0.999])  # weight averaging, as in full.py
    trial.suggest_int("unfrozen_blocks", 0, count_blocks(backbone))
    trial.suggest_float("augment", 0.0, 0.6)
    return {"image_size": 128, "pretrained": True, "epochs": 4, "early_stopping_patience": 0, "batch_size": 32,
            "hflip": True}
