"""A space for a machine without a GPU: five small ImageNet-pretrained backbones fine-tuned at 128-192 px for 4 epochs.

The searched keys of search_spaces/full.py (lr, scheduler and its parameters, dropout, unfrozen blocks, weight
decay, weight averaging, the augmentation families, contrast normalisation, LP-FT and layer-wise LR decay) but batch
size, fixed at 32 for CPU memory and speed, and without the plateau schedule; plus the image size: the
EfficientNet-Lite weights were trained at 224-260 px, so a larger film may pay for its cost (about (size / 128)^2
times the time of 128 px). Films are decoded once at 192 px and smaller trials resize them on the device. Narrow the
backbones with --backbones (e.g. --backbones tf_efficientnet_lite0 when only its weights are at hand).
"""

from cxr.models import count_blocks
from search_spaces._levers import OFF, suggest_augmentation, suggest_fine_tuning
from search_spaces._schedulers import suggest_scheduler

BACKBONES = ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2", "mobilenetv3_large_100",
             "resnet18"]
IMAGE_SIZES = [128, 160, 192]

# Reference config: EfficientNet-Lite0 at 128 px with the last three blocks + head trained, Adam 1e-3 with a cosine
# schedule (a common recipe for fine-tuning a small ImageNet backbone for a few epochs), mild geometric augmentation
# (what `augment` 0.3 did: rotation up to 6 degrees, crops down to ~80 % of the area, contrast +-6 %) and none of
# the other levers.
BASELINES = [
    {
        "backbone": "tf_efficientnet_lite0", "image_size": 128, "lr": 1e-3, "weight_decay": 1e-5, "optimizer": "adam",
        "scheduler": "cosine", "warmup_epochs": 0, "dropout": 0.2, "unfrozen_blocks": 3, "ema_decay": 0.0,
        **OFF, "aug_rotation": 6.0, "aug_crop": 0.2, "aug_contrast": 0.06,
    },
]


def space(trial):
    backbone = trial.suggest_categorical("backbone", BACKBONES)
    trial.suggest_categorical("image_size", IMAGE_SIZES)
    trial.suggest_float("lr", 1e-4, 3e-3, log=True)
    trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
    trial.suggest_categorical("optimizer", ["adam", "adamw"])
    suggest_scheduler(trial, ["cosine", "onecycle", "step"])
    trial.suggest_float("dropout", 0.0, 0.5)
    trial.suggest_categorical("ema_decay", [0.0, 0.999])  # weight averaging, as in full.py
    trial.suggest_int("unfrozen_blocks", 0, count_blocks(backbone))
    suggest_augmentation(trial)
    suggest_fine_tuning(trial, max_head_epochs=1)
    return {"pretrained": True, "epochs": 4, "early_stopping_patience": 0, "batch_size": 32, "hflip": True,
            "augment": 0.0}
