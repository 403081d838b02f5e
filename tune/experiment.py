"""One experiment end to end: validate, load data once, search, tabulate, retrain the best, test once."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from cxr.config import TrainConfig
from cxr.dataset import CxrData, load_dataset
from cxr.final_metrics import FinalMetrics, read_metrics
from cxr.errors import InputError
from cxr.images import MAX_PIXELS, default_cache_dir
from cxr.intervals import interval_text, value_text
from cxr.models import pretrained_state
from cxr.monitors import minimised
from cxr.shift import ROBUSTNESS_BANK
from cxr.synthetic import create_synthetic
from cxr.jsonio import read_json, write_json
from tune import budget as budget_module
from tune import cluster, plan, search, tracking
from tune.loopback import requested_address
from tune.final_stage import FinalSettings, run_final_stage
from tune.report import write_report
from tune.results import ExperimentPaths, create_tables, leaderboard, planned_epochs, write_table
from tune.settings import RunSettings, fed_into
from tune.spaces import load_space, validate

CONSOLE_LEADERBOARD_ROWS = 10


def run_experiment(experiment: RunSettings, *, resume: bool = False, extend: int = 0, started: float | None = None) -> int:
    """Run an experiment that tune.settings.resolve returned (started: the command's start on time.monotonic's
    clock, where --time-budget counts from)."""
    paths = ExperimentPaths(Path(experiment.results_dir) / experiment.name)
    space = load_space(experiment.space)
    if experiment.backbones is not None:
        space = space.with_backbones([b.strip() for b in experiment.backbones.split(",") if b.strip()])
    space = space.with_overrides(_overrides(experiment))
    checked = validate(space, seed=experiment.seed)
    # fail fast, cheapest first: flags and paths (tune.settings), the space, every backbone's weights, the cluster's
    # address; only then decode the data (minutes on the real split)
    weights = {b: pretrained_state(b, experiment.weights_dir) for b in sorted(checked.pretrained_backbones)}
    cluster.check_reachable(experiment.address)
    tracker = tracking.connect(experiment.mlflow) if experiment.mlflow else None
    data = _load_data(experiment, checked.image_size)
    cluster.connect(experiment.address)
    status, budget = "FAILED", None
    try:
        cluster.check_resources(experiment.cpus_per_trial, experiment.gpus_per_trial, experiment.workers_per_trial)
        budget = _budget(experiment, paths, checked.max_epochs, started, fresh=bool(extend), data=data)
        settings = dataclasses.replace(_settings(experiment, checked.max_epochs, paths), config_keys=checked.common_keys,
                                       trials_at_once=budget and budget.trials_at_once)
        cluster.check_storage(settings.storage_path)
        if not (resume or extend):
            _create(paths, experiment, data)
        plan.write_data_plan(paths, data)
        if tracker:
            tracker = tracking.start_parent(tracker, paths, read_json(paths.run))
        data_ref, weight_refs = cluster.share(data), cluster.share_weights(weights)
        callbacks = (tracking.TrialRunsCallback(tracker, budget),) if tracker else ()
        if budget:
            budget.note_search_start()
        records = _search(settings, paths, space, checked, data_ref, weight_refs, resume=resume, extend=extend,
                          callbacks=callbacks, budget=budget)
        search_ended = budget.spent() if budget else 0.0
        if tracker:
            tracking.log_trials(tracker, records)
        trials, epochs = create_tables(records, experiment.metric)
        write_table(paths.trials, trials)
        write_table(paths.epochs, epochs)
        previous = read_json(paths.best) if paths.best.exists() else None
        best = _best(trials, records, experiment.metric)
        write_json(paths.best, best)
        _print_leaderboard(trials, experiment.metric)
        unchanged = extend and paths.finished and previous and previous["trial_id"] == best["trial_id"]
        if extend:
            _archive(paths, ["report"] if unchanged else ["final", "report"])
        if unchanged:
            print(f"\nthe best trial is still {best['trial_id']}: final/ is kept as it is")
        else:
            _final_stage(experiment, best, trials, data, data_ref, weight_refs, settings, paths, budget)
        if budget:
            _account(budget, paths, search_ended)
        report = write_report(paths.root)
        print(f"report: {report}")
        if tracker:
            _track_final(tracker, experiment, paths, report)
        print(f"results: {paths.root} ({_folder_size(paths.root)})")
        status = "FINISHED"
        return 0
    finally:
        cluster.shutdown()
        if tracker and tracker.parent_id:
            tracking.finish(tracker, status)
        if budget:
            budget.save()
            budget.close()


def _budget(experiment: RunSettings, paths: ExperimentPaths, max_epochs: int, started: float | None,
            fresh: bool, data: CxrData) -> budget_module.Budget | None:
    """--time-budget: this session's budget (after --resume: what is left of it; --extend: a budget of its own),
    opened for the session: the experiment owns it and hands it to the searcher, the stopper and the tracking
    callback."""
    if not experiment.time_budget:
        return None
    slots = cluster.trial_slots(experiment.cpus_per_trial, experiment.gpus_per_trial)
    settings = dict(**fed_into("budget", experiment), total_s=budget_module.parse_duration(experiment.time_budget),
                    final_epochs=experiment.final_epochs or max_epochs, member_slots=slots,
                    # the trials that fit at once (--max-concurrent, if lower): what the start-up cap plans with
                    trials_at_once=min(slots, experiment.max_concurrent or slots),
                    robustness_passes=_robustness_passes(experiment, data),
                    **({"started": started} if started is not None else {}))
    budget = budget_module.Budget.resumed(paths.budget, fresh=fresh, **settings)
    budget.open()
    return budget


def _robustness_passes(experiment: RunSettings, data: CxrData) -> float:
    """The final stage's robustness step per member, in the shifted val passes trials measure (shift_time_s): every
    perturbation of the bank, mirrored too (mirroring is chosen later: planned as on), over the films that choose the
    threshold (val; with --final folds every pool film) and test; 0 with --no-robustness."""
    if not experiment.robustness:
        return 0.0
    n_val, n_test = len(data.indices("val")), len(data.indices("test"))
    chosen = n_val if experiment.final_kind == "seeds" else n_val + len(data.indices("train"))
    return len(ROBUSTNESS_BANK) * 2 * (chosen + n_test) / max(1, n_val)


def _account(budget: budget_module.Budget, paths: ExperimentPaths, search_ended: float) -> None:
    """How the budget was spent (added up over --resume sessions), into budget.json before the report."""
    spending, rest = budget.spending, budget.spent() - search_ended
    spending["search_s"] = round(spending.get("search_s", 0.0) + search_ended - budget.search_started_s, 1)
    spending["final_stage_s"] = round(spending.get("final_stage_s", 0.0) + rest, 1)  # members, assembly, tables
    spending["total_s"] = round(budget.spent(), 1)
    spending["other_s"] = round(spending["total_s"] - spending["search_s"] - spending["final_stage_s"], 1)
    spending["budget_s"] = budget.total_s
    # the estimate for the epochs the members ran, made as the final stage started (else the decision's), less the
    # finish that final_stage_s does not hold yet (the report, Ray's shutdown, the exit)
    planned = (budget.final_plan or {}).get("estimate_s") or (budget.decision or {}).get("final_estimate_s")
    if planned is not None:
        spending["final_estimate_s"] = round(planned - budget_module.FINISH_S, 1)
        spending["final_estimate_error_s"] = round(rest - spending["final_estimate_s"], 1)
    spending["trials_stopped_by_budget"] = len(budget.stopped)
    budget.save()
    off = f", estimated {spending['final_estimate_s']:.0f} s" if "final_estimate_s" in spending else ""
    print(f"time budget: {spending['total_s']:.0f} s of {budget.total_s:.0f} s so far: search {spending['search_s']:.0f} s, "
          f"final stage {spending['final_stage_s']:.0f} s{off}, start-up {spending['other_s']:.0f} s", flush=True)


def _track_final(tracker: tracking.Tracker, experiment: RunSettings, paths: ExperimentPaths, report: Path) -> None:
    metrics = read_metrics(paths.metrics)
    tracking.log_final(tracker, paths, metrics, report)
    print(f"mlflow: parent run {tracker.parent_id} in {tracker.uri}")
    if experiment.register:
        version = tracking.register(tracker, paths, experiment.register, metrics)
        print(f"mlflow: registered {experiment.register} version {version}")


def _search(settings: search.SearchSettings, paths: ExperimentPaths, space, checked, data_ref, weight_refs, *,
            resume: bool, extend: int, callbacks: tuple = (), budget: budget_module.Budget | None = None) -> list:
    """Run the one unfinished search (a new one, a resumed one or an --extend round) and read the finished ones
    back: records of every trial of the study. searches.json lists the rounds (Tune experiments) in order."""
    rounds = read_json(paths.searches) if paths.searches.exists() else []
    if extend:
        if rounds and not rounds[-1]["finished"]:
            raise InputError(f"experiment '{paths.root.name}' has an unfinished search: finish it with --resume before --extend")
        done = sum(r["num_samples"] for r in rounds)
        rounds.append({"tune_dir": f"{search.TUNE_DIR_NAME}-extend-{len(rounds)}", "num_samples": extend,
                       "first_index": done + 1, "finished": False})
    elif not rounds:
        rounds.append({"tune_dir": search.TUNE_DIR_NAME, "num_samples": settings.num_samples, "first_index": 1,
                       "finished": False})
    write_json(paths.searches, rounds)
    stopped = budget.stopped if budget else budget_module.stopped_trials(paths.budget)  # earlier rounds' too
    records = []
    for i, r in enumerate(rounds):
        round_settings = dataclasses.replace(settings, tune_dir_name=r["tune_dir"], num_samples=r["num_samples"],
                                             first_index=r["first_index"], enqueue_baselines=i == 0)
        if r["finished"]:
            records += search.finished_records(round_settings, stopped)
            continue
        restart = resume and search.can_restore(round_settings)
        plan.write_search_plan(paths, round_settings)
        found = search.run_search(round_settings, space, checked, data_ref, weight_refs, resume=restart,
                                  callbacks=callbacks, budget=budget)
        search.drop_finished_checkpoints(round_settings, found)
        records += found
        r["finished"] = True
        write_json(paths.searches, rounds)
    return records


def _final_stage(experiment: RunSettings, best: dict, trials: pd.DataFrame, data: CxrData, data_ref, weight_refs,
                 settings: search.SearchSettings, paths: ExperimentPaths, budget: budget_module.Budget | None) -> None:
    epochs = experiment.final_epochs
    if budget and not epochs:  # the user's own --final-epochs is kept whatever the budget says
        planned = planned_epochs(best["config"])
        epochs = budget.epochs_that_fit(planned)
        if epochs < planned:
            print(f"time budget: {budget.left():.0f} s left: the final members train {epochs} epoch(s) instead of the "
                  f"best config's {planned} (what fits; --final-epochs sets them)", flush=True)
    if budget:  # epochs is set here: the user's --final-epochs or what fits
        budget.note_final_plan(epochs)
    final = dataclasses.replace(FinalSettings(**fed_into("final", experiment)), epochs=epochs)
    size = TrainConfig.from_dict(best["config"]).image_size
    if size != data.image_size:
        data = _decoded_at(experiment, data, size)
        data_ref = cluster.share(data)
    metrics = run_final_stage(best, trials, data, data_ref, weight_refs, settings, final, paths)
    _print_final(metrics)


def _archive(paths: ExperimentPaths, names: list[str]) -> None:
    """--extend: the previous final/ and report/ move to final-<k>/ and report-<k>/, never overwritten."""
    k = 1
    while any((paths.root / f"{name}-{k}").exists() for name in ("final", "report")):
        k += 1
    for name in names:
        if (paths.root / name).exists():
            (paths.root / name).rename(paths.root / f"{name}-{k}")
            print(f"the previous {name}/ is kept as {name}-{k}/")


def _folder_size(folder: Path) -> str:
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return f"{size / 2**20:.1f} MiB on disk"


def _overrides(experiment: RunSettings) -> dict:
    """CLI flags that pin config keys in every trial, whatever the space says."""
    pinned = {"monitor": experiment.metric, "target_recall": experiment.target_recall, "seed": experiment.seed}
    if experiment.max_epochs:
        pinned["epochs"] = experiment.max_epochs
    if experiment.image_size:
        pinned["image_size"] = experiment.image_size
    if experiment.precision:
        pinned["precision"] = experiment.precision
    if not experiment.pretrained:
        pinned["pretrained"] = False
    return pinned


def _load_data(experiment: RunSettings, image_size: int) -> CxrData:
    cache = Path(experiment.cache_dir) if experiment.cache_dir else default_cache_dir()
    if experiment.dataset == "synthetic":
        root = cache / f"synthetic-{experiment.seed}"
        if not root.exists():
            create_synthetic(root.with_suffix(".tmp"), seed=experiment.seed).rename(root)
    else:
        root = Path(experiment.data_dir)
    data = load_dataset(root, image_size=image_size, val_fraction=experiment.val_fraction, seed=experiment.seed, cache_dir=cache,
                        max_pixels=experiment.max_pixels or MAX_PIXELS)
    for note in data.manifest.attrs.get("notes", []):
        print(f"note: {note}")
    return data


def _decoded_at(experiment: RunSettings, data: CxrData, size: int) -> CxrData:
    """The same films decoded at the best config's size: the search decoded them at the largest size it draws (its
    smaller trials resize on the device), while the shipped members must see films as cxr.predict decodes them."""
    print(f"final stage: the films decoded again at {size} px, the best config's size (the search decoded them at "
          f"{data.image_size} px)", flush=True)
    cache = Path(experiment.cache_dir) if experiment.cache_dir else default_cache_dir()
    return data.decoded_at(size, cache, experiment.max_pixels or MAX_PIXELS)


def _settings(experiment: RunSettings, max_epochs: int, paths: ExperimentPaths) -> search.SearchSettings:
    storage = f"{experiment.storage_path.rstrip('/')}/{experiment.name}" if experiment.storage_path else str(paths.root.resolve())
    return search.SearchSettings(**fed_into("search", experiment), max_epochs=max_epochs, storage_path=storage,
                                 journal_path=str(paths.journal), study_name=paths.study_name,
                                 local_cluster=requested_address(experiment.address) is None)


def _create(paths: ExperimentPaths, experiment: RunSettings, data: CxrData) -> None:
    paths.root.mkdir(parents=True, exist_ok=False)
    write_json(paths.run, dataclasses.asdict(experiment))
    write_table(paths.splits, data.manifest)


def _best(trials: pd.DataFrame, records: list, metric: str) -> dict:
    column = f"best_{metric}"
    if column not in trials or trials[column].isna().all():
        raise RuntimeError(f"no trial reported {metric}: see the error column of trials.parquet")
    row = trials.iloc[0]
    record = next(r for r in records if r.trial_id == row["trial_id"])
    val = {c[len("at_best_"):]: row[c] for c in trials.columns if c.startswith("at_best_val_")}  # one consistent epoch
    return {"trial_id": row["trial_id"], "metric": metric, "value": float(row[column]), "best_epoch": int(row["best_epoch"]),
            "config": record.config, "val": val}


def _print_leaderboard(trials: pd.DataFrame, metric: str) -> None:
    top = leaderboard(trials, metric, CONSOLE_LEADERBOARD_ROWS)
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.precision", 4):
        order = "lowest first" if minimised(metric) else "highest first"
        print(f"\nleaderboard (top {len(top)} of {len(trials)} trials by best {metric}, {order}):")
        print(top.to_string(index=False))


def _print_final(metrics: FinalMetrics) -> None:
    print(f"\ndecision threshold {metrics['threshold']:.4f} (calibrated probability, temperature "
          f"{metrics['temperature']:.2f}): {metrics['threshold_rule']}")
    chosen_on = metrics["threshold_chosen_on"]
    ensemble = metrics["ensemble"]["chosen"]["auroc"]
    members = ", ".join(f"{m['chosen']['auroc']:.4f}" for m in metrics["members"])
    scope = "members on their own folds" if chosen_on == "oof" else "members"
    print(f"{chosen_on} AUROC: {scope} {members}; ensemble {ensemble:.4f}; mirroring {'on' if metrics['tta']['used'] else 'off'}")
    for split in (chosen_on, "test"):
        m = metrics[split]
        if m is None:
            print(f"{split}: no {split} split in the data")
            continue
        print(f"{split}: recall {m['recall']:.4f} [95% CI {interval_text(m['recall_ci95'])}]  specificity "
              f"{m['specificity']:.4f} [95% CI {interval_text(m['specificity_ci95'])}]  ppv {value_text(m['ppv'])}  "
              f"npv {value_text(m['npv'])}  auroc {value_text(m['auroc'])}  "
              f"(tp {m['tp']} fn {m['fn']} tn {m['tn']} fp {m['fp']}; 95% CI by patient bootstrap)")
    for warning in metrics["warnings"]:
        print(f"note: {warning}")

