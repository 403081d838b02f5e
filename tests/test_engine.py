"""cxr.engine: fit on the synthetic set, exact resume from a mid-run checkpoint, schedules, predict; half precision and
the fp16 loss scaler (real on the CPU), the diverged-loss error, batches loaded in a thread or augmented on the host."""

from __future__ import annotations

import math
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from cxr.config import MONITORS, TrainConfig
from cxr.dataset import CxrData
import cxr.engine
from cxr.engine import CHECKPOINT_FILE, EngineOptions, FitResult, fit, predict
from cxr.errors import InputError
from cxr.models import create_model
from cxr.shift import ROBUSTNESS_BANK, everywhere, selection_shift

CPU = torch.device("cpu")
TIMING_KEYS = {"train_images_per_s", "epoch_time_s", "shift_time_s", "cpu_run_share"}


def _config(**changes) -> TrainConfig:
    base = {
        "backbone": "test_efficientnet", "pretrained": False, "lr": 3e-3, "scheduler": "cosine", "epochs": 8,
        "batch_size": 32, "augment": 0.3, "monitor": "val_auroc", "early_stopping_patience": 0, "image_size": 64,
    }
    return TrainConfig(**{**base, **changes})


def _same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def _without_timings(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in epoch.items() if k not in TIMING_KEYS} for epoch in history]


def _assert_same_history(a: list[dict], b: list[dict]) -> None:
    a, b = _without_timings(a), _without_timings(b)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        assert all(_same(x[k], y[k]) for k in x), {k: (x[k], y[k]) for k in x if not _same(x[k], y[k])}


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(value.cpu(), b[key].cpu()), key


@pytest.fixture(scope="module")
def trained(synthetic_data: CxrData) -> FitResult:
    return fit(_config(), synthetic_data, device=CPU)


def test_fit_learns_the_synthetic_set(trained: FitResult) -> None:
    assert len(trained.history) == 8
    aurocs = [epoch["val_auroc"] for epoch in trained.history]
    assert trained.best_metrics["val_auroc"] >= 0.9, aurocs
    assert trained.best_epoch == 1 + int(np.argmax(aurocs))
    assert trained.best_metrics == trained.history[trained.best_epoch - 1]
    assert trained.history[-1]["train_loss"] < trained.history[0]["train_loss"]
    _assert_same_state(trained.model.state_dict(), trained.best_state)  # the model holds the best epoch


def test_history_has_every_monitor_and_the_bookkeeping(trained: FitResult, synthetic_data: CxrData) -> None:
    val_labels = synthetic_data.labels[synthetic_data.indices("val")]
    for epoch, metrics in enumerate(trained.history, start=1):
        assert metrics["epoch"] == epoch
        for key in MONITORS:
            assert key in metrics and isinstance(metrics[key], float), key
        for key in ("lr", "train_loss", "val_threshold_at_recall", "train_images_per_s", "epoch_time_s"):
            assert key in metrics, key
        assert metrics["stopped_early"] is False
        assert metrics["best_epoch"] == max(range(1, epoch + 1), key=lambda e: trained.history[e - 1]["val_auroc"])
        assert metrics["val_tp"] + metrics["val_fn"] == val_labels.sum()
        assert metrics["val_tn"] + metrics["val_fp"] == (val_labels == 0).sum()
        assert metrics["val_recall_at_threshold"] >= 0.98  # target_recall's default


def test_early_stopping_patience_one(synthetic_data: CxrData) -> None:
    """With patience 1 a run goes on exactly as long as every epoch beats the best so far, and stops at the first
    that does not."""
    config = _config(epochs=6, early_stopping_patience=1, monitor="val_auroc", image_size=32)
    history = fit(config, synthetic_data, device=CPU).history
    aurocs = [h["val_auroc"] for h in history]
    assert len(history) < config.epochs, f"this seeded config stops early; if training changed, pick one that does: {aurocs}"
    assert all(aurocs[i] > max(aurocs[:i]) for i in range(1, len(aurocs) - 1)), aurocs
    assert aurocs[-1] <= max(aurocs[:-1])
    assert [h["stopped_early"] for h in history] == [False] * (len(history) - 1) + [True]
    assert history[-1]["best_epoch"] == 1 + aurocs.index(max(aurocs))


def test_predict_gives_probabilities_of_the_best_model(trained: FitResult, synthetic_data: CxrData) -> None:
    val, test = synthetic_data.indices("val"), synthetic_data.indices("test")
    probs = predict(trained.model, synthetic_data.images[test], contrast_norm="none")
    assert probs.shape == (len(test),) and probs.dtype == np.float64  # float32 would tie confident films at 1.0
    assert ((probs >= 0) & (probs <= 1)).all() and probs.std() > 0.05
    assert roc_auc_score(synthetic_data.labels[test], probs) > 0.8
    val_probs = predict(trained.model, synthetic_data.images[val], batch_size=7, contrast_norm="none")
    assert roc_auc_score(synthetic_data.labels[val], val_probs) == pytest.approx(
        trained.best_metrics["val_auroc"], abs=1e-9
    )
    small = predict(trained.model, synthetic_data.images[test[:5]], image_size=48, contrast_norm="none")
    assert small.shape == (5,) and not np.allclose(small, probs[:5], atol=1e-6)


def test_every_epoch_scores_the_val_films_under_the_selection_bank(trained: FitResult, synthetic_data: CxrData) -> None:
    """val_shift_*: each val film under the perturbation selection_shift deals it, scored by the epoch's model;
    reproduced from the best model, and below the clean scores: the bank costs this model ranking."""
    val = synthetic_data.indices("val")
    labels, best = synthetic_data.labels[val], trained.best_metrics
    shifted = predict(trained.model, synthetic_data.images, contrast_norm="none", shift=selection_shift(len(synthetic_data.images), val))[val]
    assert roc_auc_score(labels, shifted) == pytest.approx(best["val_shift_auroc"], abs=1e-9)
    assert best["val_shift_auroc"] < best["val_auroc"]
    assert all(0 < h["shift_time_s"] < h["epoch_time_s"] for h in trained.history)
    if sys.platform.startswith("linux"):  # cxr.run_share reads Linux's schedstat
        assert all(0 < h["cpu_run_share"] <= 1 for h in trained.history)
    clean = roc_auc_score(labels, predict(trained.model, synthetic_data.images[val], contrast_norm="none"))
    strong = [p for p in ROBUSTNESS_BANK if p.strength == 2]
    aurocs = {p.name: roc_auc_score(labels, predict(trained.model, synthetic_data.images[val], contrast_norm="none", shift=everywhere(p, len(val))))
              for p in strong}
    assert min(aurocs.values()) < clean - 0.02, (clean, aurocs)


RESUME_SCHEDULES = {
    "cosine": {"scheduler": "cosine", "warmup_epochs": 1},
    "step": {"scheduler": "step", "step_size": 1, "gamma": 0.5},
    "plateau": {"scheduler": "plateau", "plateau_patience": 0, "gamma": 0.5},
    "onecycle": {"scheduler": "onecycle", "pct_start": 0.3},
    "step+ema": {"scheduler": "step", "step_size": 1, "gamma": 0.5, "ema_decay": 0.99},
    # saved in the head-only phase, resumed into it, then the switch; every augmentation lever draws from the RNGs
    "lp-ft+levers": {"scheduler": "onecycle", "pct_start": 0.3, "head_epochs": 3, "lr_decay": 0.5, "unfrozen_blocks": 2,
                     "aug_gamma": 0.3, "aug_contrast": 0.2, "aug_sharpness": 0.5, "aug_noise": 0.02, "aug_lowres": 0.3,
                     "aug_rotation": 10.0, "aug_crop": 0.2, "contrast_norm": "equalize"},
}


@pytest.mark.parametrize("schedule", list(RESUME_SCHEDULES))
def test_resume_from_a_mid_run_checkpoint_is_exact(schedule: str, synthetic_data: CxrData, tmp_path: Path) -> None:
    config = _config(epochs=4, dropout=0.3, augment=0.5, image_size=32, monitor="val_loss", **RESUME_SCHEDULES[schedule])
    data = _few_films(synthetic_data)  # two batches an epoch: exactness does not grow with the films
    saved = []

    def on_epoch_end(epoch: int, metrics: dict, save_checkpoint) -> None:
        assert metrics["epoch"] == epoch
        if epoch == 2:
            saved.append(save_checkpoint(tmp_path))

    whole = fit(config, data, on_epoch_end, device=CPU)
    assert saved == [tmp_path / CHECKPOINT_FILE] and saved[0].is_file()
    resumed_epochs = []
    resumed = fit(config, data, lambda e, m, s: resumed_epochs.append(e), resume_from=tmp_path, device=CPU)
    assert resumed_epochs == [3, 4]
    _assert_same_state(resumed.best_state, whole.best_state)
    _assert_same_state(resumed.model.state_dict(), whole.model.state_dict())
    _assert_same_history(resumed.history, whole.history)
    assert resumed.best_epoch == whole.best_epoch
    assert whole.best_epoch == 1 + int(np.argmin([h["val_loss"] for h in whole.history]))  # val_loss: lowest is best


def test_lp_ft_trains_the_head_alone_then_what_fine_tuning_trains(synthetic_data: CxrData, tmp_path: Path) -> None:
    config = _config(epochs=2, image_size=32, head_epochs=1, unfrozen_blocks=2)
    torch.manual_seed(config.seed)  # as fit starts: the same initial weights
    initial = create_model(config.backbone, pretrained=False, unfrozen_blocks=2).state_dict()
    states = {}

    def keep(epoch: int, metrics: dict, save_checkpoint) -> None:
        states[epoch] = torch.load(save_checkpoint(tmp_path), weights_only=True)["model"]

    fit(config, synthetic_data, keep, device=CPU)

    def changed(state: dict) -> set[str]:
        return {k for k, v in initial.items() if not torch.equal(state[k], v)}

    head = {"backbone.classifier.weight", "backbone.classifier.bias"}
    assert changed(states[1]) == head  # running statistics too: every normalisation layer stayed in eval
    model = create_model(config.backbone, pretrained=False, unfrozen_blocks=2)  # what fine-tuning trains
    norms = [n for n, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
             and any(p.requires_grad for p in m.parameters())]
    fine_tuned = {n for n, p in model.named_parameters() if p.requires_grad}
    fine_tuned |= {f"{n}.{s}" for n in norms for s in ("running_mean", "running_var", "num_batches_tracked")}
    assert changed(states[2]) == fine_tuned and len(fine_tuned) > 10 * len(head)


def test_weight_average_is_what_validates_and_ships(synthetic_data: CxrData) -> None:
    config = _config(epochs=2, image_size=32, ema_decay=0.9)
    averaged = fit(config, synthetic_data, device=CPU)
    plain = fit(config.replace(ema_decay=0.0), synthetic_data, device=CPU)
    assert averaged.history[0]["train_loss"] == plain.history[0]["train_loss"]  # the same training steps
    assert averaged.history[-1]["val_loss"] != plain.history[-1]["val_loss"]  # validated on other weights
    differs = [k for k, v in averaged.best_state.items() if v.is_floating_point() and not torch.equal(v, plain.best_state[k])]
    assert differs


def test_fit_is_seeded(synthetic_data: CxrData) -> None:
    """What makes the exact-resume comparison meaningful: same seed same weights, another seed other ones."""
    config, data = _config(epochs=1, dropout=0.3, augment=0.5, image_size=32), _few_films(synthetic_data)
    a, b = fit(config, data, device=CPU), fit(config, data, device=CPU)
    other = fit(config.replace(seed=1), data, device=CPU)
    _assert_same_state(a.best_state, b.best_state)
    assert not all(torch.equal(a.best_state[k], other.best_state[k]) for k in a.best_state)


def test_resume_rejects_another_config(synthetic_data: CxrData, tmp_path: Path) -> None:
    config = _config(epochs=1, image_size=32)
    fit(config, synthetic_data, lambda e, m, save: save(tmp_path), device=CPU)
    with pytest.raises(InputError, match="another config"):
        fit(config.replace(lr=1e-3), synthetic_data, resume_from=tmp_path / CHECKPOINT_FILE, device=CPU)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")
def test_early_stopping_stops_after_patience_epochs_without_improvement(synthetic_data: CxrData) -> None:
    manifest = synthetic_data.manifest.copy()
    negatives_in_val = (manifest["split"] == "val") & (manifest["label"] == 0)
    manifest.loc[negatives_in_val, "split"] = "train"  # val of one class: val_auroc is nan, never an improvement
    config = _config(epochs=5, early_stopping_patience=2, monitor="val_auroc", image_size=32)
    result = fit(config, CxrData(synthetic_data.images, manifest), device=CPU)
    assert len(result.history) == 2
    assert all(math.isnan(h["val_auroc"]) for h in result.history)
    assert [h["stopped_early"] for h in result.history] == [False, True]
    assert result.best_epoch == 0 and result.best_metrics == {}


def _lrs(config: TrainConfig, data: CxrData) -> list[dict]:
    return fit(config, data, device=CPU).history


def test_step_schedule_in_fit(synthetic_data: CxrData) -> None:
    history = _lrs(_config(scheduler="step", step_size=1, gamma=0.1, epochs=2, image_size=32), synthetic_data)
    assert [h["lr"] for h in history] == pytest.approx([3e-3, 3e-4])


def test_cosine_warmup_in_fit(synthetic_data: CxrData) -> None:
    history = _lrs(_config(scheduler="cosine", warmup_epochs=1, epochs=2, image_size=32), synthetic_data)
    assert [h["lr"] for h in history] == pytest.approx([1.5e-3, 3e-3])


def test_plateau_in_fit(synthetic_data: CxrData) -> None:
    config = _config(scheduler="plateau", plateau_patience=0, gamma=0.1, epochs=3, image_size=32)
    history = _lrs(config, synthetic_data)
    lrs, losses = [h["lr"] for h in history], [h["val_loss"] for h in history]
    assert lrs[:2] == pytest.approx([3e-3, 3e-3])
    improved = losses[1] < losses[0] * (1 - 1e-4)  # ReduceLROnPlateau's default relative threshold
    assert lrs[2] == pytest.approx(3e-3 if improved else 3e-4)


def test_onecycle_in_fit_uses_exactly_the_batches_it_trains(synthetic_data: CxrData) -> None:
    n_train = len(synthetic_data.indices("train"))
    # a batch size that leaves a last batch of 1, which training drops: the schedule must not count it
    batch_size = next(b for b in range(40, n_train) if n_train % b == 1)
    steps = n_train // batch_size
    config = _config(scheduler="onecycle", pct_start=0.3, epochs=2, batch_size=batch_size, image_size=32)
    history = _lrs(config, synthetic_data)

    reference_opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=config.lr)
    reference = torch.optim.lr_scheduler.OneCycleLR(reference_opt, max_lr=config.lr, total_steps=2 * steps, pct_start=0.3)
    expected = []
    for _ in range(2):
        for _ in range(steps):
            reference_opt.step()
            reference.step()
        expected.append(reference_opt.param_groups[0]["lr"])
    assert [h["lr"] for h in history] == pytest.approx(expected, rel=1e-9)  # lr after each epoch's last step
    assert history[1]["lr"] < history[0]["lr"] < config.lr


def test_fit_needs_train_and_val_rows(synthetic_data: CxrData) -> None:
    manifest = synthetic_data.manifest.copy()
    manifest["split"] = manifest["split"].replace("val", "train")
    with pytest.raises(InputError, match="train and val"):
        fit(_config(epochs=1), CxrData(synthetic_data.images, manifest), device=CPU)


def _few_films(data: CxrData, train: int = 64, val: int = 32) -> CxrData:
    """The first films of train and val only (half precision is emulated, slowly, on most CPUs)."""
    manifest = data.manifest.copy()
    for split, keep in (("train", train), ("val", val)):
        manifest.loc[manifest.index[data.indices(split)[keep:]], "split"] = "unused"
    return CxrData(data.images, manifest)


# the fp16 scaler skips the first steps, which overflow: the first epoch may end before any optimizer step
FP16_SKIPS_FIRST_STEPS = pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)`:UserWarning")


@FP16_SKIPS_FIRST_STEPS
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_autocast_trains_on_the_cpu_in_its_own_arithmetic(precision: str, synthetic_data: CxrData):
    config, data = _config(epochs=1, image_size=32, precision=precision), _few_films(synthetic_data)
    half, full = fit(config, data, device=CPU), fit(config.replace(precision="auto"), data, device=CPU)
    assert (half.history[0]["training_precision"], full.history[0]["training_precision"]) == (precision, "fp32")
    assert math.isfinite(half.history[0]["train_loss"])
    assert half.history[0]["train_loss"] != full.history[0]["train_loss"]  # the same steps, in other arithmetic


@FP16_SKIPS_FIRST_STEPS
def test_the_fp16_loss_scaler_steps_and_a_resumed_run_continues_its_state(synthetic_data: CxrData, tmp_path: Path):
    config = _config(epochs=4, image_size=32, precision="fp16", monitor="val_loss", scheduler="step", step_size=1)
    folders = {name: tmp_path / name for name in ("whole-2", "whole-4", "resumed-4")}
    for folder in folders.values():
        folder.mkdir()

    def saving_at(epochs: dict[int, Path]):
        return lambda epoch, metrics, save: save(epochs[epoch]) if epoch in epochs else None

    data = _few_films(synthetic_data)
    whole = fit(config, data, saving_at({2: folders["whole-2"], 4: folders["whole-4"]}), device=CPU)
    resumed = fit(config, data, saving_at({4: folders["resumed-4"]}), resume_from=folders["whole-2"], device=CPU)
    scaler = {name: torch.load(f / CHECKPOINT_FILE, weights_only=True)["scaler"] for name, f in folders.items()}
    assert scaler["whole-2"] and scaler["whole-4"] != scaler["whole-2"]  # stepped and updated every step
    assert scaler["whole-4"]["scale"] < 2.0**16  # it skipped overflowing steps, and training went on
    assert scaler["resumed-4"] == scaler["whole-4"]  # continued from the checkpoint, not started afresh
    _assert_same_state(resumed.model.state_dict(), whole.model.state_dict())
    _assert_same_history(resumed.history, whole.history)


def test_a_loss_that_turns_non_finite_is_an_error_not_a_model(synthetic_data: CxrData, monkeypatch) -> None:
    create_model = cxr.engine.create_model

    def diverged(*args, **kwargs):
        model = create_model(*args, **kwargs)
        torch.nn.init.constant_(model.backbone.get_classifier().weight, math.nan)  # what a diverged step leaves
        return model

    monkeypatch.setattr(cxr.engine, "create_model", diverged)
    with pytest.raises(FloatingPointError, match=r"mean loss of epoch 1 is nan \(fp32, lr 0.003\): lower lr$"):
        fit(_config(epochs=2, image_size=32), synthetic_data, device=CPU)


def test_loading_the_next_batch_in_a_thread_trains_exactly_as_loading_inline(synthetic_data: CxrData, monkeypatch):
    """What a GPU does (cxr.feed.prefetched ahead), forced on the CPU: the same batches, in the same order."""
    config = _config(epochs=1, image_size=32, augment=0.5, dropout=0.3)
    inline = fit(config, synthetic_data, device=CPU)
    prefetched, loaders = cxr.engine.prefetched, set()

    def always_ahead(items, load, ahead):
        def load_noting_the_thread(item):
            loaders.add(threading.current_thread().name)
            return load(item)
        return prefetched(items, load_noting_the_thread, ahead=True)

    monkeypatch.setattr(cxr.engine, "prefetched", always_ahead)
    threaded = fit(config, synthetic_data, device=CPU)
    assert loaders and all(name.startswith("cxr-prefetch") for name in loaders)
    _assert_same_state(threaded.best_state, inline.best_state)


def test_augmenting_on_the_host_draws_what_augmenting_on_the_device_draws(synthetic_data: CxrData) -> None:
    """On a CPU device the two places are one: the host path (augment_on="cpu", for a GPU's benchmark) must augment
    exactly as the device path does."""
    config = _config(epochs=1, image_size=32, augment=0.5)
    on_device = fit(config, synthetic_data, device=CPU)
    on_host = fit(config, synthetic_data, device=CPU, options=EngineOptions(augment_on="cpu"))
    _assert_same_state(on_host.best_state, on_device.best_state)
    with pytest.raises(InputError, match="augment_on='gpu' is invalid"):
        EngineOptions(augment_on="gpu")
