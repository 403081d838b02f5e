"""python -m cxr.recalibrate --model final/ --data SITE --target-recall 0.98 --out site-model/: a site's own operating
point. The member weights are copied unchanged; temperature and threshold are fitted on the site's labelled films
(patient-bootstrap intervals), and a report says how the old and the new threshold do there.

SITE is a CSV/parquet manifest (path, label[, patient]) or a folder with NORMAL/ and PNEUMONIA/ (or the Kaggle
layout): every film in it is used. Too few pneumonia films to support the target is refused before any film is
decoded; the source folder is never written to, and an existing --out is refused."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from cxr.cli import DEFAULT_THRESHOLD_RULE, THRESHOLD_RULES, check_range, cli_entry
from cxr.errors import InputError
from cxr.final_metrics import CHOSEN_ON
from cxr.images import MAX_PIXELS

BATCH = 64  # films decoded and scored at a time
CONFIDENCE = 0.95  # of the exact binomial bound that sizes the site set, and the default rule's
THRESHOLD_INTERVAL_LIMIT = 0.2  # a point-rule threshold interval wider than this (probability scale) is flagged


def read_site(data: str | Path):
    """path, label, patient of every labelled site film."""
    from cxr.kaggle import scan_labelled
    from cxr.manifest import is_manifest, read_labelled

    if is_manifest(data):
        return read_labelled(data)[0]
    if not Path(data).is_dir():
        raise InputError(f"--data {data} is neither a .csv/.parquet manifest nor a folder: pass the site's labelled films")
    return scan_labelled(data)


def check_enough_positives(labels, target_recall: float) -> int:
    """Refuse a site set on which even a perfect recall could not show target_recall at CONFIDENCE (exact binomial)."""
    from cxr.intervals import exact_lower_bound, fewest_positives

    positives, needed = int(sum(labels)), fewest_positives(target_recall, CONFIDENCE)
    if positives < needed:
        best = exact_lower_bound(positives, positives, CONFIDENCE)
        raise InputError(f"--data has {positives} pneumonia film(s): even with none missed, the one-sided "
                         f"{CONFIDENCE:.0%} exact lower bound of recall would be {best:.3f}, below --target-recall "
                         f"{target_recall}: give at least {needed} pneumonia films (or lower the target)")
    return needed


def raw_probabilities(model, paths: list[str], max_pixels: int):
    """The ensemble's uncalibrated mean probability per film (mirroring as the model ships it). A film that cannot
    be read stops the recalibration naming it: a threshold fitted on a silently smaller set would mislead."""
    import numpy as np

    from cxr.images import decode

    out = []
    for start in range(0, len(paths), BATCH):
        images = []
        for path in paths[start : start + BATCH]:
            try:
                images.append(decode(path, model.image_size, max_pixels))
            except Exception as exc:  # noqa: BLE001  untrusted files: any decoder failure names the film
                raise InputError(f"site film {path} cannot be read ({type(exc).__name__}: {str(exc)[:200]}): fix or "
                                 "drop it from --data") from None
        out.append(model.member_probabilities(np.stack(images)).mean(axis=0))
    return np.concatenate(out)


def recalibrate(model_dir: str | Path, data: str | Path, out: str | Path, *, target_recall: float,
                rule: str = DEFAULT_THRESHOLD_RULE, recall_confidence: float | None = CONFIDENCE, max_pixels: int = MAX_PIXELS,
                n_boot: int | None = None, seed: int = 0, force: bool = False) -> dict:
    """Write the site's model folder to out; returns the recalibration summary (also out/recalibration.json). Before
    anything is written, the rule's out-of-sample recall on the site is estimated by cross-validation over its
    patients: one that falls short of the target beyond its own interval is refused unless force."""
    from cxr.calibration import apply_temperature
    from cxr.evaluation import operating_point, out_of_sample
    from cxr.intervals import N_BOOT, metrics_with_intervals
    from cxr.jsonio import read_json
    from cxr.metrics import rates
    from cxr.package import MODEL_FILE, load_model

    source, out = Path(model_dir), Path(out)
    _check_out(source, out)
    site = read_site(data)
    needed = check_enough_positives(site["label"], target_recall)
    model = load_model(source)
    raw = raw_probabilities(model, list(site["path"]), max_pixels)
    labels, patients = site["label"].to_numpy(), site["patient"].to_numpy()
    point = operating_point(labels, raw, patients, target_recall=target_recall, recall_confidence=recall_confidence,
                            rule=rule, n_boot=n_boot or N_BOOT, seed=seed, fitted_on="the site's")
    expected = out_of_sample(labels, raw, patients, target_recall=target_recall, rule=rule,
                             recall_confidence=recall_confidence, seed=seed)
    _refuse_a_shortfall(expected, target_recall, force)
    weights = point.pop("weights")
    old = metrics_with_intervals(labels, apply_temperature(raw, model.temperature), model.threshold, weights)
    new = metrics_with_intervals(labels, apply_temperature(raw, point["temperature"]), point["threshold"], weights)
    spec = read_json(source / MODEL_FILE)
    summary = {
        "source_model": str(source.resolve()), "site_data": str(Path(data).resolve()),
        "films": int(len(site)), "patients": int(site["patient"].nunique()), "pneumonia_films": int(labels.sum()),
        "fewest_pneumonia_films_for_target": needed, "confidence_of_that_bound": CONFIDENCE,
        "old": {"threshold": model.threshold, "temperature": model.temperature,
                "chosen_on": spec.get("threshold_chosen_on", "val"), "rule": spec.get("threshold_rule"), "site": old},
        "new": {**point, "chosen_on": "site", "site": new, "out_of_sample": expected},
        "caution": "The new threshold was fitted on these same site films: its site recall is in-sample; "
                   "out_of_sample is what the rule did on held-out site patients. Check it on further site films.",
    }
    summary["point_rule_specificity"] = float(rates(labels, apply_temperature(raw, point["temperature"]),
                                                    point["threshold_point"])["specificity"])
    summary["notes"] = notes(summary, force)
    _write_folder(source, out, spec, summary)
    return summary


def _refuse_a_shortfall(expected: dict, target: float, force: bool) -> None:
    high = expected["recall_wilson95"][1]
    if high < target and not force:
        raise InputError(f"the {expected['rule']} rule's cross-validated site recall is {expected['recall']:.3f} "
                         f"(95 % interval up to {high:.3f}), short of --target-recall {target}: nothing was written; "
                         "add site films, use --threshold-rule exact, or pass --force to write it with the shortfall "
                         "in the model card")


def notes(summary: dict, force: bool = False) -> list[str]:
    """One-line cautions for the console, recalibration.json/.html and the model card."""
    old, new = summary["old"], summary["new"]
    expected, target, out = new["out_of_sample"], new["target_recall"], []
    if expected["recall"] < target:
        out.append(f"Expected recall on the site's next films {expected['recall']:.3f} is below the target {target} "
                   f"(cross-validated, {expected['rule']} rule)" + (": written anyway (--force)." if force else "."))
    low, high = new["threshold_ci95"]
    if high - low > THRESHOLD_INTERVAL_LIMIT:
        out.append(f"The point-rule threshold's 95 % interval over site patients is {low:.3f}-{high:.3f}, wider than "
                   f"{THRESHOLD_INTERVAL_LIMIT}: the site set pins the operating point down loosely.")
    lo, hi = old["site"]["specificity_ci95"]
    if old["site"]["recall"] >= target and lo <= expected["specificity"] <= hi:
        out.append(f"The shipped threshold already reaches the target here (site recall {old['site']['recall']:.3f}) "
                   f"and the new one's expected specificity {expected['specificity']:.3f} is within the shipped one's "
                   f"interval {lo:.3f}-{hi:.3f}: the shipped threshold is as good (and was fitted on more films).")
    return out


def _check_out(source: Path, out: Path) -> None:
    if out.exists():
        raise InputError(f"--out {out} already exists: pass a new folder (nothing is ever written over)")
    src, dst = source.resolve(), out.resolve()
    if dst == src or src in dst.parents:
        raise InputError(f"--out {out} is inside the source model folder {source}: the source is never written to")


def _write_folder(source: Path, out: Path, spec: dict, summary: dict) -> None:
    """Members copied byte for byte, model.json with the site's temperature and threshold, the model card with both
    operating points, recalibration.json/.html. Built beside out and renamed: complete or absent."""
    from cxr.html_page import render_page
    from cxr.jsonio import folder_in_place, write_json
    from cxr.package import MODEL_FILE, load_model

    with folder_in_place(out) as tmp:
        for member in spec["members"]:
            shutil.copyfile(source / member["file"], tmp / member["file"])
        new = summary["new"]
        write_json(tmp / MODEL_FILE, spec | {
            "temperature": new["temperature"], "threshold": new["threshold"], "threshold_rule": new["threshold_rule"],
            "target_recall": new["target_recall"], "threshold_chosen_on": new["chosen_on"],
            "operating_points": [{"from": summary["old"]["chosen_on"], "threshold": summary["old"]["threshold"],
                                  "temperature": summary["old"]["temperature"]},
                                 {"from": f"site data {summary['site_data']}", "threshold": new["threshold"],
                                  "temperature": new["temperature"]}]})
        card = source / "model_card.md"
        (tmp / "model_card.md").write_text((card.read_text() if card.is_file() else "# Model card\n") + _card_section(summary))
        write_json(tmp / "recalibration.json", summary)
        (tmp / "recalibration.html").write_text(render_page("cxr", "recalibration.html.j2", summary=summary,
                                                            chosen_on=CHOSEN_ON))
        load_model(tmp)  # the folder this writes must load as any model folder does


def _card_section(summary: dict) -> str:
    from cxr.intervals import interval_text

    old, new = summary["old"], summary["new"]
    expected = new["out_of_sample"]
    return "\n".join([
        "", "## Site operating point (cxr.recalibrate)",
        f"- Shipped: threshold {old['threshold']:.4f}, temperature {old['temperature']:.3f}, chosen on "
        f"{CHOSEN_ON[old['chosen_on']]}.",
        f"- This folder: threshold {new['threshold']:.4f}, temperature {new['temperature']:.3f}, chosen on "
        f"{summary['films']} site films ({summary['patients']} patients, {summary['pneumonia_films']} pneumonia) from "
        f"{summary['site_data']} by the {new['rule']} rule: {new['threshold_rule']}.",
        f"- On the site's films: old threshold recall {old['site']['recall']:.3f}, specificity "
        f"{old['site']['specificity']:.3f}; new threshold recall {new['site']['recall']:.3f}, specificity "
        f"{new['site']['specificity']:.3f} (in-sample).",
        f"- Expected on the site's next films ({expected['repeats']} x {expected['folds']}-fold cross-validation over "
        f"its patients, the {new['rule']} rule refitted each time): recall {expected['recall']:.3f} "
        f"[{interval_text(expected['recall_wilson95'])}], specificity {expected['specificity']:.3f} "
        f"[{interval_text(expected['specificity_wilson95'])}].",
        f"- The rule's cost: in-sample specificity {new['site']['specificity']:.3f} against "
        f"{summary['point_rule_specificity']:.3f} at the point rule's threshold {new['threshold_point']:.4f}.",
        *[f"- Note: {note}" for note in summary["notes"]], f"- {summary['caution']}", ""])


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxr.recalibrate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model folder (final/ of a tune.run experiment)")
    parser.add_argument("--data", required=True, help="the site's labelled films: manifest or NORMAL/PNEUMONIA folder")
    parser.add_argument("--out", required=True, help="the new model folder (must not exist)")
    parser.add_argument("--target-recall", type=float, default=0.98)
    parser.add_argument("--threshold-rule", choices=THRESHOLD_RULES, default=DEFAULT_THRESHOLD_RULE,
                        help="exact (default): the highest threshold whose recall on the site's next films reaches the "
                        "target with --recall-confidence; bootstrap: its patient-bootstrap lower bound does; point: "
                        "the site films' own recall does (in-sample: out of sample it falls short about half the time)")
    parser.add_argument("--recall-confidence", type=float, default=CONFIDENCE,
                        help="confidence of the exact and bootstrap rules")
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS)
    parser.add_argument("--seed", type=int, default=0, help="seed of the patient bootstrap and the cross-validation")
    parser.add_argument("--force", action="store_true", help="write the folder even when the rule's cross-validated "
                        "recall falls short of the target (the shortfall goes into the model card)")
    args = parser.parse_args(argv)
    for key in ("target_recall", "recall_confidence", "max_pixels"):
        check_range(key, getattr(args, key), "--" + key.replace("_", "-"))
    summary = recalibrate(args.model, args.data, args.out, target_recall=args.target_recall, rule=args.threshold_rule,
                          recall_confidence=args.recall_confidence, max_pixels=args.max_pixels, seed=args.seed,
                          force=args.force)
    old, new = summary["old"], summary["new"]
    expected = new["out_of_sample"]
    print(f"site: {summary['films']} films, {summary['pneumonia_films']} pneumonia (at least "
          f"{summary['fewest_pneumonia_films_for_target']} needed)\n"
          f"shipped threshold {old['threshold']:.4f}: site recall {old['site']['recall']:.4f}, specificity "
          f"{old['site']['specificity']:.4f}\nsite threshold {new['threshold']:.4f} ({new['rule']} rule, temperature "
          f"{new['temperature']:.3f}): site recall {new['site']['recall']:.4f}, specificity "
          f"{new['site']['specificity']:.4f} (in-sample); expected on the next films: recall {expected['recall']:.4f}, "
          f"specificity {expected['specificity']:.4f} (cross-validated)\nmodel folder: {args.out}")
    for note in summary["notes"]:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
