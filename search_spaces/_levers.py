"""Shared by spaces: the levers against acquisition shift (cxr.augment's acquisition-like and geometric families,
contrast normalisation) and the fine-tuning schedule (LP-FT, layer-wise LR decay), with their off values for
baselines that run as written."""

OFF = {
    "aug_gamma": 0.0, "aug_contrast": 0.0, "aug_sharpness": 0.0, "aug_noise": 0.0, "aug_lowres": 0.0,
    "aug_rotation": 0.0, "aug_crop": 0.0, "contrast_norm": "none", "head_epochs": 0, "lr_decay": 1.0,
}


def suggest_augmentation(trial) -> None:
    """Each family's keys on its own range: up to what a film from another site plausibly looks like."""
    trial.suggest_float("aug_gamma", 0.0, 0.5)  # gamma within [0.67, 1.5]
    trial.suggest_float("aug_contrast", 0.0, 0.3)
    trial.suggest_float("aug_sharpness", 0.0, 1.0)  # from the 3 x 3 smoothed film to twice as sharp
    trial.suggest_float("aug_noise", 0.0, 0.05)  # up to ~13 grey levels of noise
    trial.suggest_float("aug_lowres", 0.0, 0.5)  # down to half the side
    trial.suggest_float("aug_rotation", 0.0, 15.0)
    trial.suggest_float("aug_crop", 0.0, 0.4)
    trial.suggest_categorical("contrast_norm", ["none", "equalize", "clahe"])


def suggest_fine_tuning(trial, max_head_epochs: int) -> None:
    trial.suggest_int("head_epochs", 0, max_head_epochs)
    trial.suggest_float("lr_decay", 0.5, 1.0)
