"""Search spaces: each module defines space(trial) (Optuna define-by-run) and may define BASELINES."""
