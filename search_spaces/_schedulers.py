"""Shared by spaces: draw an LR scheduler and only that scheduler's own parameters (a conditional space)."""


def suggest_scheduler(trial, choices: list[str]) -> str:
    scheduler = trial.suggest_categorical("scheduler", choices)
    if scheduler == "step":
        trial.suggest_int("step_size", 2, 10)
        trial.suggest_float("gamma", 0.05, 0.5)
    elif scheduler == "plateau":
        trial.suggest_int("plateau_patience", 1, 4)
        trial.suggest_float("gamma", 0.05, 0.5)
    elif scheduler == "cosine":
        trial.suggest_int("warmup_epochs", 0, 3)
    else:
        trial.suggest_float("pct_start", 0.1, 0.4)
    return scheduler
