"""The report's figures (matplotlib, Agg): each function draws one figure from the experiment's tables and
returns it; tune.report saves and embeds them."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen first: no display is needed)
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, precision_recall_curve, roc_curve  # noqa: E402

from cxr.calibration import ECE_BINS, reliability_curve  # noqa: E402
from cxr.metrics import rates  # noqa: E402
from cxr.monitors import minimised  # noqa: E402

LEARNING_CURVES_TOP = 20  # drawn one line each; the other trials as a band, so 1,000 trials stay readable
SPLIT_COLORS = {"val": "tab:blue", "oof": "tab:green", "chosen": "tab:blue", "test": "tab:red"}


def roc_pr(predictions: pd.DataFrame, threshold: float):
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(11, 4.6))
    for split, rows in predictions.groupby("split"):
        y, p, color = rows["label"], rows["probability"], SPLIT_COLORS.get(split, "gray")
        fpr, tpr, _ = roc_curve(y, p)
        precision, recall, _ = precision_recall_curve(y, p)
        roc.plot(fpr, tpr, color=color, label=split)
        pr.plot(recall, precision, color=color, label=split)
        for t, marker, name in ((threshold, "o", "operating point"), (0.5, "s", "0.5")):
            r = rates(y, p, t)
            roc.plot(1 - r["specificity"], r["recall"], marker, color=color, mfc="none" if t == 0.5 else color,
                     label=f"{split} {name}")
            pr.plot(r["recall"], r["ppv"], marker, color=color, mfc="none" if t == 0.5 else color)
    roc.plot([0, 1], [0, 1], ":", color="gray")
    roc.set(xlabel="1 - specificity", ylabel="recall (sensitivity)", title="ROC")
    pr.set(xlabel="recall", ylabel="precision (PPV)", title="Precision-recall")
    roc.legend(fontsize=8)
    return fig


def confusion(rows: pd.DataFrame, threshold: float, split: str):
    fig, ax = plt.subplots(figsize=(4.4, 4))
    ConfusionMatrixDisplay.from_predictions(rows["label"], (rows["probability"] >= threshold).astype(int),
                                            display_labels=["NORMAL", "PNEUMONIA"], cmap="Blues", ax=ax, colorbar=False)
    ax.set_title(f"{split} at threshold {threshold:.3f}")
    return fig


def threshold_sweep(predictions: pd.DataFrame, threshold: float):
    fig, ax = plt.subplots(figsize=(8, 4))
    for split, rows in predictions.groupby("split"):
        fpr, tpr, thresholds = roc_curve(rows["label"], rows["probability"], drop_intermediate=False)
        thresholds = np.clip(thresholds, 0, 1)  # the first is +inf: nothing predicted positive
        color = SPLIT_COLORS.get(split, "gray")
        # predicting p >= t: recall and specificity hold from each threshold down to the next lower one
        ax.step(thresholds, tpr, where="post", color=color, label=f"{split} recall")
        ax.step(thresholds, 1 - fpr, "--", where="post", color=color, label=f"{split} specificity")
    ax.axvline(threshold, color="black", lw=1, label=f"chosen {threshold:.3f}")
    ax.axvline(0.5, color="gray", lw=1, ls=":", label="0.5")
    ax.set(xlabel="threshold on the calibrated probability", ylabel="rate", ylim=(0, 1.02))
    ax.legend(fontsize=8, ncol=3)
    return fig


def reliability(predictions: pd.DataFrame):
    splits = sorted(predictions["split"].unique(), key=["val", "oof", "test"].index)
    fig, axes = plt.subplots(1, len(splits), figsize=(5 * len(splits), 4.4), squeeze=False)
    for ax, split in zip(axes[0], splits):
        rows = predictions[predictions["split"] == split]
        for column, name, style in (("probability_raw", "before", "o--"), ("probability", "after", "o-")):
            x, y = reliability_curve(rows["label"], rows[column])
            ax.plot(x, y, style, label=f"{name} calibration")
        ax.plot([0, 1], [0, 1], ":", color="gray")
        ax.set(title=f"{split}: reliability ({ECE_BINS} bins)", xlabel="mean predicted probability", ylabel="observed pneumonia rate")
        ax.legend(fontsize=8)
    return fig


def members(metrics: dict):
    chosen_on = metrics["threshold_chosen_on"]
    names = [f"seed {m['seed']}" if m.get("fold") is None else f"fold {m['fold']}" for m in metrics["members"]] + ["ensemble"]
    entries = metrics["members"] + [metrics["ensemble"]]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    x = np.arange(len(names))
    for offset, split, label in ((-0.2, "chosen", chosen_on), (0.2, "test", "test")):
        values = [(e[split] or {}).get("auroc", np.nan) for e in entries]
        ax.bar(x + offset, values, width=0.4, color=SPLIT_COLORS[label], label=label)
    ax.set_xticks(x, names)
    ax.set(ylabel="AUROC", title="members vs ensemble")
    ax.set_ylim(max(0.0, np.nanmin([(e[s] or {}).get("auroc", 1) for e in entries for s in ("chosen", "test")]) - 0.05), 1.0)
    ax.legend(fontsize=8)
    return fig


def robustness(metrics: dict):
    """Recall at the shipped threshold against perturbation strength (0: the clean films), one line per family of
    cxr.shift's robustness bank with its 95 % interval (patient bootstrap); a panel per split."""
    chosen_on, entries = metrics["threshold_chosen_on"], metrics["robustness"]["perturbations"]
    panels = [("chosen", chosen_on)] + ([("test", "test")] if metrics["test"] is not None else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False, sharey=True)
    families = list(dict.fromkeys(e["family"] for e in entries))
    for ax, (key, split) in zip(axes[0], panels):
        for i, family in enumerate(families):
            rows = [e for e in entries if e["family"] == family]
            x = np.array([0] + [e["strength"] for e in rows]) + 0.04 * (i - (len(families) - 1) / 2)  # bars apart
            y = np.array([metrics[split]["recall"]] + [e[key]["recall"] for e in rows], dtype=float)
            bounds = np.array([metrics[split]["recall_ci95"]] + [e[key]["recall_ci95"] for e in rows], dtype=float)
            magnitudes = ", ".join(f"{e['magnitude']:g}" for e in rows)
            ax.errorbar(x, y, yerr=np.abs(bounds.T - y), marker="o", capsize=3, label=f"{family} {magnitudes}")
        ax.axhline(metrics["target_recall"], color="gray", ls=":", label=f"target {metrics['target_recall']}")
        ax.set(xticks=[0, 1, 2], xticklabels=["clean", "mild", "strong"], xlabel="perturbation strength",
               ylabel="recall at the shipped threshold", title=f"{split}: recall under acquisition shift")
    axes[0][0].legend(fontsize=8)
    return fig


def learning_curves(epochs: pd.DataFrame, trials: pd.DataFrame, metric: str):
    """The top trials (by best metric, in its direction) as lines, ASHA's stops marked; every other trial in a
    per-epoch band."""
    fig, ax = plt.subplots(figsize=(8, 4.4))
    status = trials.set_index("trial_id")["status"]
    top = list(trials["trial_id"].head(LEARNING_CURVES_TOP))
    rest = epochs[~epochs["trial_id"].isin(top)]
    if len(rest):
        band = rest.groupby("epoch")[metric].quantile([0.1, 0.5, 0.9]).unstack()
        ax.fill_between(band.index, band[0.1], band[0.9], color="0.8",
                        label=f"the other {rest['trial_id'].nunique()} trials: 10-90 % per epoch")
        ax.plot(band.index, band[0.5], color="0.5", lw=1, ls="--", label="their median")
    for trial_id, rows in epochs[epochs["trial_id"].isin(top)].groupby("trial_id"):
        line, = ax.plot(rows["epoch"], rows[metric], lw=1, alpha=0.8)
        if status.get(trial_id) == "pruned":
            ax.plot(rows["epoch"].iloc[-1], rows[metric].iloc[-1], "x", color=line.get_color(), ms=9, mew=2)
    ax.plot([], [], "kx", label="stopped by the scheduler (ASHA)")
    best = f"lowest {metric}" if minimised(metric) else f"best {metric}"
    shown = "every trial" if not len(rest) else f"the top {len(top)} of {len(trials)} trials by {best}"
    ax.set(xlabel="epoch", ylabel=metric, title=f"learning curves of {shown}")
    ax.legend(fontsize=8)
    return fig


def optimisation_history(study: optuna.Study):
    ax = optuna.visualization.matplotlib.plot_optimization_history(study)
    ax.figure.set_size_inches(8, 4)
    return ax.figure


def importances(study: optuna.Study):
    ax = optuna.visualization.matplotlib.plot_param_importances(study)
    ax.figure.set_size_inches(8, 4)
    return ax.figure
