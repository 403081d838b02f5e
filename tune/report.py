"""python -m tune.report results/<name>: one self-contained report.html (figures embedded), the PNGs and
report.json with every number, in results/<name>/report/. tune.run writes it at its end. The page is
tune/templates/report.html.j2: it escapes every value from the data, run.json and the configs by itself."""

from __future__ import annotations

import argparse
import base64
import sys
import warnings
from pathlib import Path

from cxr.calibration import ECE_BINS
from cxr.cli import cli_entry
from cxr.errors import InputError
from cxr.html_page import Markup, render_page
from cxr.metrics import RANKING, RATES
from cxr.monitors import minimised

REPORT_LEADERBOARD_ROWS = 15


def write_report(folder: str | Path) -> Path:
    """Render the report of an experiment; returns report.html's path. Before its final stage has finished (or
    without one) the report holds the data audit and the search alone, and says so first."""
    import matplotlib.pyplot as plt
    import optuna

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
    figures = {}

    def figure(name: str, fig) -> None:
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=110)
        plt.close(fig)
        figures[name] = base64.b64encode((out / f"{name}.png").read_bytes()).decode()

    metrics = results.metrics if finished else None
    scored = None
    if finished:
        scored = _final_figures(metrics, results.predictions, figure, plots)
        notes = metrics["warnings"]
    else:
        notes = ["No final model yet (no final/): this report shows the data and the search only. Finish "
                 "the experiment with `python -m tune.run --name <name> --resume`."]
    audit = _audit(paths, results.splits)
    search, search_page = _search(paths, results, run, figure, plots, optuna)
    spent = read_json(paths.budget).get("spending") if paths.budget.is_file() else None
    plan = read_json(paths.plan) if paths.plan.is_file() else None  # none until a search has been planned
    page = render_page("tune", "report.html.j2", name=paths.root.name, notes=notes, figures=figures, metrics=metrics,
                       scored=scored, headline_metrics=(*RATES, *RANKING), ece_bins=ECE_BINS, audit=audit,
                       search=search_page, spent=spent, time_budget=run.get("time_budget"),
                       plan=_flat(plan) if plan else [])
    (out / "report.html").write_text(page)
    write_json(out / "report.json", {"experiment": paths.root.name, "run": run, "plan": plan, "best": results.best,
                                     "metrics": metrics, "audit": audit, "search": search,
                                     "figures": sorted(f"{n}.png" for n in figures)})
    return out / "report.html"


def _final_figures(metrics: dict, predictions, figure, plots) -> str:
    """The final model's figures; returns the split its headline scores (test, or the one that chose the threshold
    when there is no test split)."""
    chosen_on = metrics["threshold_chosen_on"]
    scored = "test" if metrics["test"] is not None else chosen_on
    figure("roc_pr", plots.roc_pr(predictions, metrics["threshold"]))
    figure("confusion", plots.confusion(predictions[predictions["split"] == scored], metrics["threshold"], scored))
    figure("threshold_sweep", plots.threshold_sweep(predictions, metrics["threshold"]))
    figure("reliability", plots.reliability(predictions))
    figure("members", plots.members(metrics))
    if "robustness" in metrics:  # --no-robustness skips it
        figure("robustness", plots.robustness(metrics))
    return scored


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


def _search(paths, results, run: dict, figure, plots, optuna) -> tuple[dict, dict]:
    """The search's summary for report.json, and what the page shows of it."""
    from tune.results import leaderboard
    from tune.search import open_study_storage

    metric = run["metric"]
    trials = results.trials
    top = leaderboard(trials, metric, REPORT_LEADERBOARD_ROWS)
    summary = {"trials": len(trials), "status": trials["status"].value_counts().to_dict(),
               "leaderboard": top.to_dict("records"), "importances": None}
    page = {"metric": metric, "lower_is_better": minimised(metric), "shown": len(top), "trials": len(trials),
            "journal": paths.journal.is_file(), "importances_error": None,
            # pandas escapes every cell and header (escape=True): the one piece of the page that is passed as markup
            "leaderboard": Markup(top.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0, escape=True))}
    if page["journal"]:  # a folder assembled by hand (benchmarks/bench_data_scale.py) may have none
        study = optuna.load_study(study_name=paths.study_name, storage=open_study_storage(paths.journal))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
            figure("optimisation_history", plots.optimisation_history(study))
            try:
                summary["importances"] = optuna.importance.get_param_importances(study)
                figure("importances", plots.importances(study))
            except (RuntimeError, ValueError) as exc:
                page["importances_error"] = str(exc)
    figure("learning_curves", plots.learning_curves(results.epochs, trials, metric))
    return summary, page


def _flat(value, prefix: str = "") -> list[tuple[str, object]]:
    """plan.json as one row per setting."""
    if not isinstance(value, dict):
        return [(prefix, value)]
    return [row for key, inner in value.items() for row in _flat(inner, f"{prefix}.{key}" if prefix else str(key))]


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tune.report", description=__doc__.splitlines()[0])
    parser.add_argument("experiment", help="an experiment folder, e.g. results/smoke-20261121-101500")
    args = parser.parse_args(argv)
    print(f"report: {write_report(args.experiment)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
