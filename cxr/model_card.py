"""final/model_card.md: what the shipped model is for, what it was trained and tested on, how well it does
(with intervals), how its threshold was chosen, and its limits."""

from __future__ import annotations

from cxr.config import TrainConfig
from cxr.final_metrics import CHOSEN_ON, FinalMetrics
from cxr.intervals import interval_text


def render_model_card(metrics: FinalMetrics, config: TrainConfig, best: dict) -> str:
    balance, split = metrics["class_balance"], metrics["threshold_chosen_on"]
    chosen_on = "val" if split == "val" else f"the {CHOSEN_ON[split]}"
    members = (f"seeds {[m['seed'] for m in metrics['members']]}" if split == "val" else
               f"one per patient fold of the pool, seeds {[m['seed'] for m in metrics['members']]}")
    lines = [
        "# Model card: pneumonia detection on chest X-rays", "",
        "## Intended use",
        "Decision support that flags frontal chest films (pediatric, Kaggle/Guangzhou-like) likely to show pneumonia, "
        "tuned for high recall so that few pneumonia films are missed. Not a diagnosis, not for adults or lateral "
        "films without external validation, and never without a reader.", "",
        "## Model",
        f"- Backbone `{config.backbone}` at {config.image_size} px, ensemble of {metrics['n_members']} member(s) "
        f"({members}), mean probability, test-time mirroring "
        f"{'on' if metrics['tta']['used'] else 'off'} ({metrics['tta']['rule']}), temperature "
        f"{metrics['temperature']:.3f} (fitted on {chosen_on})."
        + (f" Every film is contrast-normalised ({config.contrast_norm}) before the members see it: cxr.predict and "
           "the ONNX graph do it themselves." if config.contrast_norm != "none" else ""),
        f"- Config of search trial {best['trial_id']} ({best['metric']} {best['value']:.4f} on val); members trained "
        f"{config.epochs} epochs each.", "",
        "## Data and splits",
    ]
    lines += [f"- {split}: {b['images']} images, {b['patients']} patients, {b['pneumonia_share']:.1%} pneumonia"
              for split, b in balance.items()]
    lines += ["- val is a patient-grouped re-split of the training pool; test is the data set's own test split."
              + (" The fold members trained on the whole pool, one fold held out each." if split == "oof" else ""), "",
              "## Decision threshold",
              f"- {metrics['threshold']:.4f} on the calibrated probability: {metrics['threshold_rule']}; "
              f"target recall {metrics['target_recall']}. Bootstrap 95 % interval of the point-rule threshold on {split}: "
              f"[{interval_text(metrics['threshold_ci95'])}]. Out of sample ({metrics['out_of_sample']['repeats']} x "
              f"{metrics['out_of_sample']['folds']}-fold cross-validation over {split} patients, the rule refitted each "
              f"time): recall {metrics['out_of_sample']['recall']:.3f} "
              f"[{interval_text(metrics['out_of_sample']['recall_wilson95'])}], specificity "
              f"{metrics['out_of_sample']['specificity']:.3f}.", "",
              "## Performance at the threshold (95 % intervals by patient bootstrap)", "",
              "| split | recall | specificity | PPV | NPV | AUROC |", "|---|---|---|---|---|---|"]
    for scored in (split, "test"):
        m = metrics[scored]
        if m is not None:
            lines.append(f"| {scored} | " + " | ".join(f"{m[k]:.3f} [{interval_text(m[f'{k}_ci95'])}]"
                                                       for k in ("recall", "specificity", "ppv", "npv", "auroc")) + " |")
    lines += ["", "## Limitations"] + [f"- {w}" for w in metrics["warnings"]]
    lines += ["- Labels are the data set's own; patient ids come from file names. Subgroup recall (bacterial / viral) "
              "is in metrics.json and the report.", ""]
    return "\n".join(lines)

