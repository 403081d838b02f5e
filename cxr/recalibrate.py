"""python -m cxr.recalibrate --model final/ --data SITE --target-recall 0.98 --out site-model/: a site's own operating
point. The member weights are copied unchanged; temperature and threshold are fitted on the site's labelled films
(patient-bootstrap intervals), and a report says how the old and the new threshold do there.

SITE is a CSV/parquet manifest (path, label[, patient]) or a folder with NORMAL/ and PNEUMONIA/ (or the Kaggle
layout): every film in it is used. Too few pneumonia films to support the target is refused before any film is
decoded; the source folder is never written to, and an existing --out is refused."""

from __future__ import annotations

import argparse
import html
import shutil
import sys
from pathlib import Path

from cxr.cli import check_range, cli_entry
from cxr.errors import InputError
from cxr.images import MAX_PIXELS

BATCH = 64  # films decoded and scored at a time
CONFIDENCE = 0.95  # of the exact binomial bound that sizes the site set


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
                recall_confidence: float | None = None, max_pixels: int = MAX_PIXELS, n_boot: int | None = None,
                seed: int = 0) -> dict:
    """Write the site's model folder to out; returns the recalibration summary (also out/recalibration.json)."""
    from cxr.calibration import apply_temperature
    from cxr.evaluation import operating_point
    from cxr.intervals import N_BOOT, metrics_with_intervals
    from cxr.jsonio import read_json
    from cxr.package import MODEL_FILE, load_model

    source, out = Path(model_dir), Path(out)
    _check_out(source, out)
    site = read_site(data)
    needed = check_enough_positives(site["label"], target_recall)
    model = load_model(source)
    raw = raw_probabilities(model, list(site["path"]), max_pixels)
    labels, patients = site["label"].to_numpy(), site["patient"].to_numpy()
    point = operating_point(labels, raw, patients, target_recall=target_recall, recall_confidence=recall_confidence,
                            n_boot=n_boot or N_BOOT, seed=seed, fitted_on="the site's")
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
        "new": {**point, "chosen_on": "the site's films", "site": new},
        "caution": "The new threshold was fitted on these same site films: its site recall is in-sample. Check it "
                   "on further site films before use.",
    }
    _write_folder(source, out, spec, summary)
    return summary


def _check_out(source: Path, out: Path) -> None:
    if out.exists():
        raise InputError(f"--out {out} already exists: pass a new folder (nothing is ever written over)")
    src, dst = source.resolve(), out.resolve()
    if dst == src or src in dst.parents:
        raise InputError(f"--out {out} is inside the source model folder {source}: the source is never written to")


def _write_folder(source: Path, out: Path, spec: dict, summary: dict) -> None:
    """Members copied byte for byte, model.json with the site's temperature and threshold, the model card with both
    operating points, recalibration.json/.html. Built beside out and renamed: complete or absent."""
    from cxr.jsonio import write_json
    from cxr.package import MODEL_FILE, load_model

    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for member in spec["members"]:
            shutil.copyfile(source / member["file"], tmp / member["file"])
        new = summary["new"]
        write_json(tmp / MODEL_FILE, spec | {
            "temperature": new["temperature"], "threshold": new["threshold"], "threshold_rule": new["threshold_rule"],
            "target_recall": new["target_recall"], "threshold_chosen_on": "the site's films",
            "operating_points": [{"from": summary["old"]["chosen_on"], "threshold": summary["old"]["threshold"],
                                  "temperature": summary["old"]["temperature"]},
                                 {"from": f"site data {summary['site_data']}", "threshold": new["threshold"],
                                  "temperature": new["temperature"]}]})
        card = source / "model_card.md"
        (tmp / "model_card.md").write_text((card.read_text() if card.is_file() else "# Model card\n") + _card_section(summary))
        write_json(tmp / "recalibration.json", summary)
        (tmp / "recalibration.html").write_text(_html(summary))
        load_model(tmp)  # the folder this writes must load as any model folder does
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _card_section(summary: dict) -> str:
    old, new = summary["old"], summary["new"]
    return "\n".join([
        "", "## Site operating point (cxr.recalibrate)",
        f"- Shipped: threshold {old['threshold']:.4f}, temperature {old['temperature']:.3f}, chosen on {old['chosen_on']}.",
        f"- This folder: threshold {new['threshold']:.4f}, temperature {new['temperature']:.3f}, chosen on "
        f"{summary['films']} site films ({summary['patients']} patients, {summary['pneumonia_films']} pneumonia) from "
        f"{summary['site_data']}: {new['threshold_rule']}.",
        f"- On the site's films: old threshold recall {old['site']['recall']:.3f}, specificity "
        f"{old['site']['specificity']:.3f}; new threshold recall {new['site']['recall']:.3f}, specificity "
        f"{new['site']['specificity']:.3f} (in-sample).", f"- {summary['caution']}", ""])


def _html(summary: dict) -> str:
    from cxr.intervals import interval_text, value_text

    esc = html.escape
    rows = "".join(f"<tr><td>{name}</td><td>{p['threshold']:.4f}</td><td>{esc(str(p['chosen_on']))}</td>"
                   f"<td>{value_text(p['site']['recall'])} [{interval_text(p['site']['recall_ci95'])}]</td>"
                   f"<td>{value_text(p['site']['specificity'])} [{interval_text(p['site']['specificity_ci95'])}]</td></tr>"
                   for name, p in (("shipped", summary["old"]), ("site", summary["new"])))
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>site recalibration</title></head><body>"
            f"<h1>Site operating point</h1><p>{summary['films']} films of {summary['patients']} patients from "
            f"{esc(summary['site_data'])}; {summary['pneumonia_films']} pneumonia films (at least "
            f"{summary['fewest_pneumonia_films_for_target']} are needed for target recall "
            f"{summary['new']['target_recall']} at {summary['confidence_of_that_bound']:.0%}, exact binomial).</p>"
            "<table border=1><tr><th>threshold</th><th>value</th><th>chosen on</th><th>site recall (95 % interval by "
            f"patient)</th><th>site specificity</th></tr>{rows}</table><p>{esc(summary['new']['threshold_rule'])}. "
            f"{esc(summary['caution'])}</p></body></html>")


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxr.recalibrate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model folder (final/ of a tune.run experiment)")
    parser.add_argument("--data", required=True, help="the site's labelled films: manifest or NORMAL/PNEUMONIA folder")
    parser.add_argument("--out", required=True, help="the new model folder (must not exist)")
    parser.add_argument("--target-recall", type=float, default=0.98)
    parser.add_argument("--recall-confidence", type=float, help="as in tune.run: the highest threshold whose one-sided "
                        "lower confidence bound of site recall (patient bootstrap) reaches the target")
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS)
    parser.add_argument("--seed", type=int, default=0, help="seed of the patient bootstrap")
    args = parser.parse_args(argv)
    for key in ("target_recall", "recall_confidence", "max_pixels"):
        check_range(key, getattr(args, key), "--" + key.replace("_", "-"))
    summary = recalibrate(args.model, args.data, args.out, target_recall=args.target_recall,
                          recall_confidence=args.recall_confidence, max_pixels=args.max_pixels, seed=args.seed)
    old, new = summary["old"], summary["new"]
    print(f"site: {summary['films']} films, {summary['pneumonia_films']} pneumonia (at least "
          f"{summary['fewest_pneumonia_films_for_target']} needed)\n"
          f"shipped threshold {old['threshold']:.4f}: site recall {old['site']['recall']:.4f}, specificity "
          f"{old['site']['specificity']:.4f}\nsite threshold {new['threshold']:.4f} (temperature "
          f"{new['temperature']:.3f}): site recall {new['site']['recall']:.4f}, specificity "
          f"{new['site']['specificity']:.4f} (in-sample)\nmodel folder: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
