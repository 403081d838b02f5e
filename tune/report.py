"""python -m tune.report results/<name>: one self-contained report.html (figures embedded), the PNGs and
report.json with every number, in results/<name>/report/. tune.run writes it at its end."""

from __future__ import annotations

import argparse
import base64
import html
import sys
import warnings
from pathlib import Path

from cxr.calibration import ECE_BINS
from cxr.cli import cli_entry
from cxr.errors import InputError
from cxr.intervals import interval_text, value_text
from cxr.metrics import RANKING, RATES

REPORT_LEADERBOARD_ROWS = 15


def write_report(folder: str | Path) -> Path:
    """Render the report of an experiment; returns report.html's path. Before its final stage has finished (or
    without one) the report holds the data audit and the search alone, and says so first."""
    import matplotlib.pyplot as plt
    import optuna
    import pandas as pd

    from tune import report_plots as plots
    from cxr.jsonio import read_json, write_json
    from tune.results import ExperimentPaths, load

    paths = ExperimentPaths(Path(folder))
    if not paths.run.is_file():
        raise InputError(f"{folder} is not an experiment folder (no run.json): pass results/<name>")
    if not paths.trials.is_file():
        raise InputError(f"{folder} has no trials table yet (trials.parquet): the search has not finished once")
    results, run = load(paths.root), read_json(paths.run)
    finished = paths.finished
    out = paths.report
    out.mkdir(exist_ok=True)
    figures, sections = {}, []

    def figure(name: str, fig) -> str:
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=110)
        plt.close(fig)
        figures[name] = base64.b64encode((out / f"{name}.png").read_bytes()).decode()
        return f'<img alt="{name}" src="data:image/png;base64,{figures[name]}">'

    metrics = results.metrics if finished else None
    if finished:
        sections += _final_sections(metrics, results.predictions, figure, plots)
        notes = metrics["warnings"]
    else:
        notes = ["No final model yet (no final/): this report shows the data and the search only. Finish "
                 "the experiment with `python -m tune.run --name <name> --resume`."]
    audit = _audit(paths, results.splits)
    sections.append(("Data audit", _audit_html(audit)))
    search, search_html = _search(paths, results, run, figure, plots, optuna, pd)
    sections.append(("The search", search_html))
    spent = read_json(paths.budget).get("spending") if paths.budget.is_file() else None
    if spent:
        sections.append(("Time budget", _budget_html(spent, run.get("time_budget"))))
    plan = read_json(paths.plan) if paths.plan.is_file() else None  # none until a search has been planned
    if plan:
        sections.append(("Plan", _plan_html(plan)))
    page = _page(paths.root.name, notes, sections)
    (out / "report.html").write_text(page)
    write_json(out / "report.json", {"experiment": paths.root.name, "run": run, "plan": plan, "best": results.best,
                                     "metrics": metrics, "audit": audit, "search": search,
                                     "figures": sorted(f"{n}.png" for n in figures)})
    return out / "report.html"


def _final_sections(metrics: dict, predictions, figure, plots) -> list[tuple[str, str]]:
    sections = []
    fit = metrics["threshold_chosen_on"]
    scored = "test" if metrics["test"] is not None else fit
    sections.append(("Headline", _headline(metrics, scored)))
    sections.append(("ROC and precision-recall", figure("roc_pr", plots.roc_pr(predictions, metrics["threshold"]))
                     + f"<p>Filled markers: the operating point (threshold chosen on {fit}); open markers: 0.5.</p>"))
    rows = predictions[predictions["split"] == scored]
    sections.append(("Confusion matrix", figure("confusion", plots.confusion(rows, metrics["threshold"], scored))))
    sections.append(("Threshold sweep", figure("threshold_sweep", plots.threshold_sweep(predictions, metrics["threshold"]))
                     + "<p>Recall and specificity against the threshold on the calibrated probability.</p>"))
    sections.append(("Calibration", figure("reliability", plots.reliability(predictions)) + _calibration(metrics)))
    sections.append(("Members vs ensemble", figure("members", plots.members(metrics)) + _members(metrics)))
    if "folds" in metrics:
        sections.append(("Cross-validation", _folds(metrics)))
    sections.append(("Subgroups", _subgroups(metrics)))
    return sections


def _headline(metrics: dict, scored: str) -> str:
    m = metrics[scored]
    cells = "".join(f"<tr><td>{name}</td><td><b>{value_text(m[name])}</b></td><td>{interval_text(m.get(f'{name}_ci95'))}</td></tr>"
                    for name in (*RATES, *RANKING))
    fit = metrics["threshold_chosen_on"]
    note = "" if scored == "test" else f"<p class=warn>No test split: these are {fit} numbers ({fit} also chose the threshold).</p>"
    return (f"<p>Decision threshold <b>{metrics['threshold']:.4f}</b> on the calibrated probability "
            f"(temperature {metrics['temperature']:.3f}): {html.escape(metrics['threshold_rule'])}. "
            f"Point-rule threshold {metrics['threshold_point']:.4f}, its 95 % interval over {fit} patients "
            f"{interval_text(metrics['threshold_ci95'])}.</p>{_expected(metrics, fit)}{note}"
            f"<table><tr><th>{scored} metric</th><th>value</th><th>95 % interval (patient bootstrap, "
            f"{metrics['n_boot']} resamples)</th></tr>{cells}</table>"
            f"<p>tp {m['tp']} · fn {m['fn']} · tn {m['tn']} · fp {m['fp']} on {m['images']} films of {m['patients']} "
            f"patients. Wilson (image-level) cross-check: recall {interval_text(m['recall_wilson95'])}, specificity "
            f"{interval_text(m['specificity_wilson95'])}.</p>" + _rule_cost(metrics))


def _expected(metrics: dict, fit: str) -> str:
    """What the threshold rule did on held-out patients of the split that chose it (cross-validated)."""
    e = metrics["out_of_sample"]
    return (f"<p>Out of sample ({e['repeats']} x {e['folds']}-fold cross-validation over {fit} patients, the "
            f"{e['rule']} rule refitted each time): recall <b>{value_text(e['recall'])}</b> "
            f"[{interval_text(e['recall_wilson95'])}], specificity <b>{value_text(e['specificity'])}</b> "
            f"[{interval_text(e['specificity_wilson95'])}] against the target {metrics['target_recall']}.</p>")


def _rule_cost(metrics: dict) -> str:
    cost = metrics["rule_cost"]
    if not metrics["recall_confidence"]:
        return ""
    fit = metrics["threshold_chosen_on"]
    return (f"<p>The confidence rule costs specificity: {fit} {cost[f'{fit}_specificity_point_rule']:.3f} (point rule) "
            f"&rarr; {cost[f'{fit}_specificity_chosen']:.3f}" + (f"; test {cost['test_specificity_point_rule']:.3f} "
            f"&rarr; {cost['test_specificity_chosen']:.3f}" if "test_specificity_chosen" in cost else "") + ".</p>")


def _calibration(metrics: dict) -> str:
    rows = "".join(f"<tr><td>{split}</td><td>{when}</td>" + "".join(f"<td>{v[k]:.4f}</td>" for k in ("ece", "brier", "log_loss")) + "</tr>"
                   for split, c in metrics["calibration"].items() for when, v in c.items())
    return f"<table><tr><th>split</th><th>calibration</th><th>ECE ({ECE_BINS} bins)</th><th>Brier</th><th>log-loss</th></tr>{rows}</table>"


def _members(metrics: dict) -> str:
    fit = metrics["threshold_chosen_on"]

    def row(name, entry):
        test, own = entry["test"] or {}, entry["fit"]
        return (f"<tr><td>{name}</td><td>{value_text(own['auroc'])}</td><td>{value_text(own['spec_at_recall'])}</td>"
                f"<td>{value_text(test.get('auroc'))}</td><td>{value_text(test.get('recall'))}</td><td>{value_text(test.get('specificity'))}</td></tr>")
    body = "".join(row(f"member seed {m['seed']}" + ("" if m.get("fold") is None else f", fold {m['fold']}")
                       + f" (best epoch {m['best_epoch']})", m) for m in metrics["members"])
    tta = metrics["tta"]
    plain, mirrored = tta["fit_auroc_plain"], tta["fit_auroc_tta"]
    scope = "its own fold" if fit == "oof" else "val"
    return (f"<table><tr><th></th><th>{fit} AUROC</th><th>{fit} specificity at target recall</th><th>test AUROC</th>"
            f"<th>test recall</th><th>test specificity</th></tr>{body}{row('ensemble (mean)', metrics['ensemble'])}</table>"
            f"<p>Each member on {scope}, at the threshold those films pick for it (uncalibrated). Test-time mirroring "
            f"{'used' if tta['used'] else 'not used'} ({html.escape(tta['rule'])}: {fit} AUROC {value_text(plain)} "
            f"plain, {value_text(mirrored)} mirrored).</p>")


def _folds(metrics: dict) -> str:
    """The cross-validated estimate: each fold scored by the member that never saw it, and the spread."""
    folds = metrics["folds"]
    rows = "".join(f"<tr><td>{f['fold']}</td><td>{f['images']}</td><td>{f['patients']}</td>"
                   + "".join(f"<td>{value_text(f[k])}</td>" for k in ("auroc", "recall", "specificity")) + "</tr>"
                   for f in folds["per_fold"])
    spread = "".join(f"<td>{value_text(s['mean'])} ± {value_text(s['sd'])}</td>" for s in folds["spread"].values())
    oof = metrics["oof"]
    single = folds["test_single_members"]
    single_text = "" if not single else (
        f"<p>On test, single members at this threshold reach recall {', '.join(value_text(s['recall']) for s in single)} "
        f"and specificity {', '.join(value_text(s['specificity']) for s in single)}; the mean of all members reaches "
        f"{value_text(metrics['test']['recall'])} and {value_text(metrics['test']['specificity'])}.</p>")
    return (f"<p>{metrics['k']} patient-grouped, class-stratified folds of the pool (train + val; test untouched). "
            "Each fold member trained on the other folds (its epoch chosen on an inner patient hold-out of them) and "
            "scored its own fold; temperature, mirroring and threshold were fitted on these out-of-fold scores. "
            "<b>Out-of-fold scores come from one member each, while test and new films get the mean of all "
            f"{metrics['k']}</b>: averaging usually ranks films a little better, so the out-of-fold numbers are a "
            "slightly pessimistic estimate of the shipped ensemble.</p>"
            "<table><tr><th>fold</th><th>films</th><th>patients</th><th>AUROC</th><th>recall</th><th>specificity</th></tr>"
            f"{rows}<tr><td>mean ± sd</td><td></td><td></td>{spread}</tr></table>"
            f"<p>Cross-validated estimate over all out-of-fold films (95 % interval by patient bootstrap): AUROC "
            f"{value_text(oof['auroc'])} [{interval_text(oof['auroc_ci95'])}], recall {value_text(oof['recall'])} "
            f"[{interval_text(oof['recall_ci95'])}], specificity {value_text(oof['specificity'])} "
            f"[{interval_text(oof['specificity_ci95'])}].</p>{single_text}")


def _subgroups(metrics: dict) -> str:
    rows = "".join(f"<tr><td>{split}</td><td>{g['kind']}</td><td>{g['images']}</td><td>{g['patients']}</td><td>{g['missed']}</td>"
                   f"<td>{value_text(g['recall'])}</td><td>{interval_text(g['recall_ci95'])}</td></tr>"
                   for split, groups in metrics["subgroups"].items() for g in groups)
    balance = "".join(f"<tr><td>{split}</td><td>{b['images']}</td><td>{b['patients']}</td><td>{b['pneumonia_share']:.1%}</td>"
                      f"<td>{b.get('bacterial_images', 0)}</td><td>{b.get('viral_images', 0)}</td></tr>"
                      for split, b in metrics["class_balance"].items())
    return (f"<h3>Recall per pneumonia kind (from file names)</h3><table><tr><th>split</th><th>kind</th><th>films</th>"
            f"<th>patients</th><th>missed</th><th>recall</th><th>95 % interval</th></tr>{rows}</table>"
            f"<h3>Class balance</h3><table><tr><th>split</th><th>films</th><th>patients</th><th>pneumonia</th>"
            f"<th>bacterial</th><th>viral</th></tr>{balance}</table>")


def _audit(paths, splits) -> dict:
    """Cached in audit.json: hashing every film's pixels costs a minute on the full data set."""
    from cxr.audit import audit, hash_files
    from cxr.jsonio import read_json, write_json

    cached = paths.root / "audit.json"
    if cached.is_file():
        return read_json(cached)
    result = audit(splits, hash_files(list(splits["path"])))
    write_json(cached, result)
    return result


def _audit_html(audit: dict) -> str:
    """File names, splits and patient ids come from the data (a manifest or file names): every one is escaped."""
    esc = html.escape
    by = ", ".join(f"{esc(k)}: {v}" for k, v in audit["duplicate_groups_by_splits"].items()) or "none"
    examples = "".join("<li>" + " = ".join(f"{esc(Path(e['path']).name)} ({esc(e['split'])})" for e in group) + "</li>"
                       for group in audit["duplicate_examples"][:10])
    patients = ", ".join(esc(str(p)) for p in audit["patient_examples"][:20])
    return (f"<p>{audit['images_hashed']} films hashed by their decoded pixels. Pixel-identical groups across splits: "
            f"<b>{audit['duplicate_groups_across_splits']}</b> ({by}); within one split: "
            f"{audit['duplicate_groups_within_one_split']}. Patients in both the training pool (train + val) and test: "
            f"<b>{audit['patients_in_pool_and_test']}</b>{': ' + patients if patients else ''}."
            f" The test split is reported as the data set defines it, not changed.</p><ul>{examples}</ul>")


def _search(paths, results, run: dict, figure, plots, optuna, pd) -> tuple[dict, str]:
    from tune.results import leaderboard
    from tune.search import open_study_storage

    metric = run["metric"]
    trials = results.trials
    top = leaderboard(trials, metric, REPORT_LEADERBOARD_ROWS)
    parts = [f"<h3>Leaderboard (top {len(top)} of {len(trials)} by best {metric})</h3>",
             top.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0, escape=True)]
    summary = {"trials": len(trials), "status": trials["status"].value_counts().to_dict(),
               "leaderboard": top.to_dict("records"), "importances": None}
    if paths.journal.is_file():  # a folder assembled by hand (benchmarks/bench_data_scale.py) may have none
        study = optuna.load_study(study_name=paths.study_name, storage=open_study_storage(paths.journal))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
            parts.append("<h3>Optimisation history (Optuna)</h3>" + figure("optimisation_history", plots.optimisation_history(study)))
            try:
                summary["importances"] = optuna.importance.get_param_importances(study)
                parts.append("<h3>Parameter importances (Optuna, fANOVA)</h3>" + figure("importances", plots.importances(study)))
            except (RuntimeError, ValueError) as exc:
                parts.append(f"<p>Parameter importances need more finished trials with varying parameters ({html.escape(str(exc))}).</p>")
    else:
        parts.append("<p>No optuna.journal in this experiment: no optimisation history.</p>")
    parts.append("<h3>Learning curves</h3>" + figure("learning_curves", plots.learning_curves(results.epochs, trials, metric)))
    return summary, "".join(parts)


def _budget_html(spent: dict, asked: str | None) -> str:
    """How --time-budget was spent (as of writing this report) and how far off the final stage's estimate was."""
    rows = [("budget", spent["budget_s"]), ("search", spent["search_s"]),
            ("final stage (members, assembly, tables)", spent["final_stage_s"]),
            ("start-up (imports, data, cluster)", spent["other_s"]), ("total so far", spent["total_s"])]
    table = "".join(f"<tr><th>{name}</th><td>{value:.0f} s</td></tr>" for name, value in rows)
    estimate = ""
    if "final_estimate_s" in spent:
        estimate = (f"<p>The search stopped starting trials when the final stage was estimated at "
                    f"{spent['final_estimate_s']:.0f} s; it took {spent['final_stage_s']:.0f} s (off by "
                    f"{spent['final_estimate_error_s']:+.0f} s). {spent['trials_stopped_by_budget']} trial(s) were "
                    "stopped by the budget at an epoch boundary (status budget; their best epoch counts).</p>")
    return f"<p>--time-budget {html.escape(str(asked))}</p><table>{table}</table>{estimate}"


def _plan_html(plan: dict) -> str:
    """plan.json as one row per setting (its paths and library names come from the machine: escaped)."""
    rows = "".join(f"<tr><th style='text-align:left'>{html.escape(key)}</th><td>{html.escape(str(value))}</td></tr>"
                   for key, value in _flat(plan))
    return f"<p>What the run decided before its first trial, and the final stage's choices (plan.json).</p><table>{rows}</table>"


def _flat(value, prefix: str = "") -> list[tuple[str, object]]:
    if not isinstance(value, dict):
        return [(prefix, value)]
    return [row for key, inner in value.items() for row in _flat(inner, f"{prefix}.{key}" if prefix else str(key))]


def _page(name: str, notes: list[str], sections: list[tuple[str, str]]) -> str:
    warning_box = "".join(f"<li>{html.escape(w)}</li>" for w in notes)
    body = "".join(f'<section id="{title.lower().replace(" ", "-")}"><h2>{title}</h2>{content}</section>' for title, content in sections)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(name)}: pneumonia model report</title>"
            "<style>body{font-family:sans-serif;max-width:1150px;margin:2em auto;color:#222}table{border-collapse:collapse;"
            "margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}"
            ".box{background:#fff4e0;border:1px solid #e0a040;padding:.5em 1em}.warn{color:#a04000}</style></head><body>"
            f"<h1>{html.escape(name)}: pneumonia model report</h1><div class=box><b>Read this first</b><ul>{warning_box}</ul></div>"
            f"{body}</body></html>")


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tune.report", description=__doc__.splitlines()[0])
    parser.add_argument("experiment", help="an experiment folder, e.g. results/smoke-20261121-101500")
    args = parser.parse_args(argv)
    print(f"report: {write_report(args.experiment)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
