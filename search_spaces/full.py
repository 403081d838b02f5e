"""The product's space: six ImageNet backbones fine-tuned at 224 px, with the two reference projects first."""

from cxr.models import count_blocks
from search_spaces._levers import OFF, suggest_augmentation, suggest_fine_tuning
from search_spaces._schedulers import suggest_scheduler

BACKBONES = ["tf_efficientnetv2_s", "densenet121", "resnet50", "convnext_tiny", "efficientnet_b0", "resnet18"]

# The two hand-tuned reference projects, run first so the search has to beat them. Their augmentation (what
# `augment` 0.5 did: rotation up to 10 degrees, crops down to ~70 % of the area, contrast +-10 %) is written in the
# separate geometric keys; every other lever is off, as in the projects.
REFERENCE_AUGMENTATION = {**OFF, "aug_rotation": 10.0, "aug_crop": 0.3, "aug_contrast": 0.1}
BASELINES = [
    {  # EfficientNetV2-S: Adam 1e-4, StepLR(5, 0.1), batch 32, every block trains
        "backbone": "tf_efficientnetv2_s", "lr": 1e-4, "weight_decay": 1e-6, "optimizer": "adam",
        "scheduler": "step", "step_size": 5, "gamma": 0.1, "dropout": 0.2, "ema_decay": 0.0,
        "unfrozen_blocks": count_blocks("tf_efficientnetv2_s"), "batch_size": 32, **REFERENCE_AUGMENTATION,
    },
    {  # DenseNet121: Adam 1e-4, ReduceLROnPlateau, Dropout(0.3), only denseblock3/4 (+ head) train
        "backbone": "densenet121", "lr": 1e-4, "weight_decay": 1e-6, "optimizer": "adam",
        "scheduler": "plateau", "plateau_patience": 2, "gamma": 0.1, "dropout": 0.3, "ema_decay": 0.0,
        "unfrozen_blocks": 2, "batch_size": 32, **REFERENCE_AUGMENTATION,
    },
]


def space(trial):
    backbone = trial.suggest_categorical("backbone", BACKBONES)
    trial.suggest_float("lr", 1e-5, 3e-3, log=True)
    trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
    trial.suggest_categorical("optimizer", ["adam", "adamw"])
    suggest_scheduler(trial, ["step", "plateau", "cosine", "onecycle"])
    trial.suggest_float("dropout", 0.0, 0.5)
    trial.suggest_categorical("ema_decay", [0.0, 0.999])  # weight averaging: cheap, known to help on shifted data
    trial.suggest_int("unfrozen_blocks", 0, count_blocks(backbone))
    trial.suggest_categorical("batch_size", [16, 32, 64])
    suggest_augmentation(trial)
    suggest_fine_tuning(trial, max_head_epochs=3)
    return {"image_size": 224, "pretrained": True, "epochs": 30, "early_stopping_patience": 5, "hflip": True,
            "augment": 0.0}
