"""Demo and CI space: tiny timm backbones at 64 px, 2 epochs, random init, a few CPU minutes."""

from cxr.models import count_blocks


def space(trial):
    backbone = trial.suggest_categorical("backbone", ["test_efficientnet", "resnet18"])
    trial.suggest_float("lr", 1e-3, 1e-2, log=True)
    scheduler = trial.suggest_categorical("scheduler", ["step", "cosine"])
    if scheduler == "step":
        trial.suggest_int("step_size", 1, 2)
        trial.suggest_float("gamma", 0.1, 0.5)
    trial.suggest_float("dropout", 0.0, 0.3)
    trial.suggest_int("unfrozen_blocks", 1, count_blocks(backbone))
    return {"pretrained": False, "image_size": 64, "epochs": 2, "batch_size": 32, "augment": 0.3}
