"""The cpu space as it searched before the levers against acquisition shift (issue 29): benchmarks/bench_shift.py's
`today` arm.

search_spaces/cpu.py runs with every lever key (search_spaces/_levers.OFF: the acquisition-like and geometric
augmentation families, contrast normalisation, LP-FT, layer-wise LR decay) held at its off value, and the one
augmentation key it had then, `augment` (rotation, crop and brightness/contrast together), searched on its old range
0-0.6. Every other key is cpu's own draw, so the arms differ in the levers only.
"""

from search_spaces import cpu
from search_spaces._levers import OFF

# cpu's reference config as it was: `augment` 0.3 is the rotation, crop and contrast its geometric keys now replay
BASELINES = [{**baseline, **OFF, "augment": 0.3} for baseline in cpu.BASELINES]


class _LeversOff:
    """An Optuna trial that answers a lever key with its off value instead of drawing it (cpu.space's own code runs,
    so this space follows any change to cpu's other keys)."""

    def __init__(self, trial):
        self._trial = trial

    def __getattr__(self, name: str):
        attribute = getattr(self._trial, name)
        if not name.startswith("suggest_"):
            return attribute
        return lambda key, *args, **kwargs: OFF[key] if key in OFF else attribute(key, *args, **kwargs)


def space(trial):
    fixed = cpu.space(_LeversOff(trial))
    trial.suggest_float("augment", 0.0, 0.6)
    return {**{k: v for k, v in fixed.items() if k != "augment"}, **OFF}
