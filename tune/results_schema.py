"""What each file of an experiment folder and each column of its tables holds: the text of results/README.md and of
the guide's results reference (tune.reference renders both). tests/test_reference.py checks it against the demo
experiment's files, tables and metrics.json, so a file, column or key the code starts writing fails there until it
is described here.

A name may hold placeholders: <m> any val metric (val_auroc, ...), <key> any TrainConfig key, <i> and <k> a number,
<plot> a word; a name ending in / stands for the folder and everything under it.
"""

from __future__ import annotations

FILES: dict[str, str] = {
    "run.json": "the settings of the run (every `tune.run` flag, `RunSettings`); `--resume` repeats them exactly",
    "plan.json": "what the run decided, and from what, before its first trial (`tune.plan`; shown in the report's "
                 "\"Plan\" section, logged to MLflow's parent run): `search` (the round, `num_samples`, `trial_slots` "
                 "(trials the cluster holds at once) and `trials_at_once` (after `--max-concurrent`), `startup_trials` "
                 "and `startup_cap` (trials that may start before TPE steers), `sampler` and `trial_scheduler` with the "
                 "settings each holds, ASHA's `rungs` (the epochs where trials are compared; none for FIFO)), `data` "
                 "(its fingerprint: `films`, `patients`, per split `films`, `patients` and `pneumonia_share`, "
                 "`image_size`, `decode_cache`: the decoded films' file), `versions` (Python and the libraries), and "
                 "from the final stage `final` (`kind`, `n_members`, their `seeds`, `epochs`, the `trial_id` whose config "
                 "they train, `threshold_rule` and `recall_confidence`: how the threshold is fixed); each session "
                 "rewrites the sections it decides again",
    "splits.parquet": "the manifest used, one row per film (columns below)",
    "trials.parquet": "one row per trial, best first (columns below)",
    "epochs.parquet": "one row per trial per epoch (columns below)",
    "best.json": "the best trial: `trial_id`, `metric`, `value` and `best_epoch`, full `config`, and `val`: every val "
                 "metric of that one epoch",
    "optuna.journal": "the Optuna study (JournalStorage file, study named after the experiment): one trial per Ray "
                      "trial in creation order, every epoch an intermediate value, value = the trial's best epoch, "
                      "ASHA-stopped trials `PRUNED`, errors `FAIL`, budget-stopped trials `COMPLETE`; "
                      "`optuna-dashboard results/<name>/optuna.journal` opens it",
    "searches.json": "the Tune experiments of this study in order (`tune/`, then `tune-extend-<k>/` per `--extend`) "
                     "and whether each finished",
    "audit.json": "the data audit's cache (pixel-identical films across splits, patients in both the training pool "
                  "and test), shown in the report",
    "budget.json": "`--time-budget` only: `total_s`, `spent_s` (over every session so far), `stopped` (the trials "
                   "the budget stopped, status `budget`), `decision` (when the search stopped starting trials, with "
                   "`left_s`, `at_s`, `final_estimate_s`, `epoch_estimate_s`), `final_plan` (as the final stage started: "
                   "the members' `epochs`, `left_s`, `estimate_s`) and `spending` (`search_s`, "
                   "`final_stage_s`, `other_s`, `total_s`, `budget_s`, `final_estimate_s` (the final plan's, else the "
                   "decision's, less the finish allowance: what `final_stage_s` measures) and `final_estimate_error_s`: "
                   "how far off it was, `trials_stopped_by_budget`); "
                   "`--resume` continues from it",
    "mlflow.json": "`--mlflow` only: the tracking `uri`, `experiment_id` and the parent run's `parent_id`, so "
                   "`--resume` and `--extend` continue the same parent run",
    "final/": "the shippable model (the files below): written whole by one rename, so its presence marks the "
              "experiment finished; `cxr.load_model` reads it and nothing else is needed",
    "final/model.json": "the shippable model's contract: `format`, `version`, `positive_class`, `config`, `members` "
                        "(file, seed), `combine`, `tta`, `temperature`, `threshold` (on the calibrated probability), "
                        "`threshold_rule`, `target_recall`, `threshold_chosen_on` (`val` or `oof` as in metrics.json; "
                        "`site` in a folder `cxr.recalibrate` wrote), `final_kind`, `image_size`, normalisation "
                        "(`mean`, `std`, `grayscale_as_rgb`), `training_precision`; `cxr.load_model(folder)` reads it",
    "final/member-<i>.safetensors": "the weights of member i (safetensors: data only, no pickle)",
    "final/metrics.json": "the evaluation (keys below; schema `cxr.final_metrics.FinalMetrics`, whose one reader "
                          "`read_metrics` refuses a file off it naming the key)",
    "final/predictions.parquet": "fit-set and test rows of the final model (columns below)",
    "final/history.parquet": "every member's per-epoch metrics (columns below)",
    "final/folds.parquet": "`--final folds` only: every film of the manifest and its role for each member (columns "
                           "below)",
    "final/model_card.md": "intended use, data and splits, metrics with intervals, how the threshold was chosen, "
                           "limitations",
    "member-checkpoints/": "members trained so far while the final stage runs (lets `--resume` skip them); removed "
                           "once `final/` is written",
    ".final.tmp/": "`final/` while it is written: every file of `final/` goes here first, then one rename makes it "
                   "`final/`, so `final/` is complete or absent and its presence marks the experiment finished "
                   "(`--resume` refuses it, `--extend` needs it); a leftover of a killed driver is replaced by the "
                   "next `--resume`",
    "final-<k>/": "the `final/` an `--extend` round replaced, kept",
    "report-<k>/": "the `report/` an `--extend` round replaced, kept",
    "report/": "the report (the files below); `python -m tune.report results/<name>` writes it again",
    "report/report.html": "the report: one self-contained file (`python -m tune.report results/<name>` writes it "
                          "again)",
    "report/report.json": "every number the report shows",
    "report/<plot>.png": "the report's figures, also embedded in report.html",
    "tune/": "Ray Tune's experiment (trial folders, searcher state; checkpoints only of errored trials), used by "
             "`--resume`; `tune-extend-<k>/` per `--extend` round",
    "tune-extend-<k>/": "Ray Tune's experiment of an `--extend` round",
}

COLUMNS: dict[str, dict[str, str]] = {
    "splits.parquet": {
        "path": "the film's file",
        "label": "1 = PNEUMONIA, 0 = NORMAL",
        "patient": "the patient id (from the file name, or the manifest's `patient`)",
        "split": "train, val or test after the patient re-split",
        "source_split": "the Kaggle folder (or the manifest's `split`) it came from",
    },
    "trials.parquet": {
        "trial_id": "Ray's trial id",
        "trial_index": "creation order; the space's BASELINES are 1, 2, ...",
        "status": "`completed` (ran every epoch), `early_stopped` (val patience ran out), `pruned` (stopped by ASHA), "
                  "`budget` (stopped by `--time-budget` at an epoch boundary; its best epoch counts), `error`",
        "epochs_run": "epochs the trial reported",
        "time_s": "wall time of the trial",
        "node_id": "the Ray node it ran on",
        "node_ip": "that node's address",
        "error": "the error's message, if any",
        "<key>": "every TrainConfig key the space drew for the trial as its own column (a key the space did not draw "
                 "for a trial is missing or NaN there, e.g. `step_size` for a cosine trial)",
        "best_epoch": "the epoch with the best search metric (lowest for `val_loss`, highest for the others: "
                      "`cxr.monitors`); rows are ranked the same way, best trial first",
        "at_best_<m>": "every val metric of that epoch, consistent with each other",
        "best_<m>": "each val metric's own best over the epochs (lowest for `val_loss`; not for counts and "
                    "thresholds)",
        "last_<m>": "each val metric at the last epoch",
        "best_gpu_peak_mem_mb": "on GPUs: the trial's peak CUDA memory (also `last_` and `at_best_`)",
        "last_gpu_peak_mem_mb": "see `best_gpu_peak_mem_mb`",
        "at_best_gpu_peak_mem_mb": "see `best_gpu_peak_mem_mb`",
    },
    "epochs.parquet": {
        "trial_id": "the trial",
        "trial_index": "its creation order",
        "epoch": "1, 2, ...",
        "lr": "the learning rate of the epoch",
        "train_loss": "mean training loss",
        "<m>": "every val metric: `val_loss`, `val_auroc`, `val_auprc`, `val_accuracy`, `val_recall`, "
               "`val_specificity`, `val_ppv` (precision), `val_npv`, `val_f1`, `val_f2` (at `val_threshold`, 0.5; NaN "
               "where a rate is undefined, e.g. ppv when no film is flagged), `val_threshold_at_recall`, "
               "`val_spec_at_recall` and `val_recall_at_threshold` (the threshold reaching the target recall, the "
               "specificity and recall there), `val_tp`/`fp`/`tn`/`fn`; `val_shift_auroc` and "
               "`val_shift_spec_at_recall` (the same val films, each under one perturbation of "
               "`cxr.shift.SELECTION_BANK` dealt to it by a seeded permutation)",
        "train_images_per_s": "training throughput of the epoch",
        "epoch_time_s": "wall time of the epoch",
        "shift_time_s": "the part of `epoch_time_s` spent on the shifted val pass of `val_shift_*`",
        "cpu_run_share": "on CPUs (Linux): the share of the time the trial's threads were ready to run that they got a "
                         "core; below 1 when other processes competed for the cores (NaN elsewhere)",
        "training_precision": "the arithmetic the epoch trained in (fp32, bf16, fp16)",
        "stopped_early": "whether early stopping ended the trial after this epoch",
        "best_epoch": "the best epoch so far by the config's `monitor`",
        "gpu_peak_mem_mb": "on GPUs: peak CUDA memory",
        "training_iteration": "Ray's bookkeeping, as Ray Tune reports it: the epoch count of this Ray trial",
        "time_total_s": "Ray: seconds since the trial started",
        "time_this_iter_s": "Ray: seconds of this epoch",
        "time_since_restore": "Ray: seconds since the last restore",
        "iterations_since_restore": "Ray: epochs since the last restore",
        "node_id": "Ray: the node",
        "node_ip": "Ray: the node's address",
        "hostname": "Ray: the node's host name",
        "pid": "Ray: the worker process",
        "timestamp": "Ray: when the epoch was reported (Unix seconds)",
        "date": "Ray: the same as a date",
        "done": "Ray: whether the trial ended with this report",
        "checkpoint_dir_name": "Ray: the epoch's checkpoint folder",
        "should_checkpoint": "Ray: whether a checkpoint came with the report",
    },
    "final/predictions.parquet": {
        "path": "the film",
        "patient": "its patient",
        "split": "`val` or `oof` (the films that chose the operating point), and `test`",
        "label": "1 = PNEUMONIA",
        "fold": "`--final folds` only: the film's fold",
        "prob_member_<i>": "member i's probability (out of fold: only the member that held the film's fold out, NaN "
                           "for the others)",
        "probability_raw": "the mean of the members that scored the film",
        "probability": "calibrated (temperature)",
        "prediction": "1 where `probability` reaches the threshold",
    },
    "final/history.parquet": {
        "member": "the member",
        "seed": "its seed",
        "fold": "its fold (`--final folds`; val is a fold member's inner hold-out)",
        "epoch": "as in epochs.parquet",
        "lr": "as in epochs.parquet",
        "train_loss": "as in epochs.parquet",
        "<m>": "as in epochs.parquet",
        "train_images_per_s": "as in epochs.parquet",
        "epoch_time_s": "as in epochs.parquet",
        "shift_time_s": "as in epochs.parquet",
        "cpu_run_share": "as in epochs.parquet",
        "training_precision": "as in epochs.parquet",
        "stopped_early": "as in epochs.parquet",
        "best_epoch": "as in epochs.parquet",
        "gpu_peak_mem_mb": "as in epochs.parquet",
    },
    "final/folds.parquet": {
        "path": "every film of the manifest",
        "patient": "its patient",
        "label": "1 = PNEUMONIA",
        "split": "its split",
        "fold": "its fold (-1: test)",
        "member_<k>": "the split column member k was sent: `train`, `val` (the inner patient hold-out that chose its "
                      "epoch), `oof` (its own fold, scored and never trained on), `test`",
    },
}

# final/metrics.json, key by key (the keys of cxr.final_metrics.FinalMetrics)
METRICS_KEYS: dict[str, str] = {
    "final_kind": "`seeds` or `folds`",
    "threshold_chosen_on": "the films that chose the operating point: `val`, or `oof` for the fold members' "
                           "out-of-fold predictions of train + val; their metrics are under that key",
    "target_recall": "the recall the threshold must reach",
    "recall_confidence": "the confidence of the exact and bootstrap rules",
    "temperature": "the calibration's temperature",
    "threshold": "the decision threshold on the calibrated probability",
    "rule": "`exact` (the default of `--threshold-rule`), `bootstrap` or `point`",
    "threshold_rule": "the rule in words",
    "n_boot": "the patient bootstrap's resamples",
    "bootstrap_seed": "its seed",
    "threshold_point": "the point rule's threshold",
    "threshold_ci95": "the threshold's interval over resampled patients",
    "out_of_sample": "the rule refitted in 3 x 5-fold cross-validation over the fit split's patients, each held-out "
                     "fold scored: pooled `recall`, `specificity` and their Wilson 95 % intervals "
                     "`recall_wilson95`/`specificity_wilson95`: what the threshold is expected to do on further films "
                     "like the fit set",
    "calibration": "ECE, Brier and log-loss before and after calibration, fit set and test",
    "val": "`--final seeds`: val at the threshold: AUROC, AUPRC, recall, specificity, PPV, NPV, accuracy, each with "
           "`<name>_ci95` by patient bootstrap, Wilson `recall_wilson95`/`specificity_wilson95`, tp/fn/tn/fp",
    "oof": "`--final folds`: the same for the out-of-fold predictions",
    "test": "test at the threshold, as `val` (null without a test split)",
    "test_at_0.5": "test at threshold 0.5",
    "subgroups": "recall per pneumonia kind",
    "class_balance": "films per class and split",
    "rule_cost": "what the confidence rule costs in specificity against the point rule",
    "warnings": "what the report puts first",
    "members": "each member at the threshold its own fit rows pick, `fit` and `test` (a fold member's fit rows are "
               "its own fold)",
    "ensemble": "the ensemble the same way",
    "folds": "`--final folds`: `per_fold` AUROC/recall/specificity of each member on its fold at the ensemble's "
             "threshold, their `spread`, and `test_single_members`: each member alone on test at that threshold",
    "tta": "whether test-time mirroring is used, and the AUROCs that decided it",
    "n_members": "members K",
    "final_epochs": "epochs of each member",
    "final_stage_s": "wall time of the final stage",
    "members_s": "the part of `final_stage_s` until the last member returned (the rest: the driver's assembly, "
                 "calibration, robustness assessment and writing)",
    "robustness": "absent when the run was started with `--no-robustness`; else the shipped model under acquisition "
                  "shift (`cxr.robustness`): `seed` of the perturbations' noise "
                  "and `perturbations`, one entry per perturbation of `cxr.shift.ROBUSTNESS_BANK` in order: `family` "
                  "(gamma, contrast, blur, noise, resolution), `magnitude`, `strength` (1 mild, 2 strong), and "
                  "`chosen` (the fit set) and `test` (null without a test split) each with `auroc`, `recall`, "
                  "`specificity` at the shipped threshold and their `<name>_ci95` over the same patient resamples as "
                  "the clean numbers",
}

CACHE_NOTE = (
    "The decoded films are not part of an experiment folder: they live in `--cache-dir` (default `~/.cache/cxr`, or "
    "`$CXR_CACHE_DIR`) as one `images-<key>-<size>px.npy` per manifest and image size (grayscale uint8, N x size x "
    "size, memory-mapped by every trial). The key covers the file list in its order, each file's size and "
    "modification time, the image size, and the decoder fingerprint (`cxr.images.decoder_fingerprint`: a hash of the "
    "decoding code, `cxr/images.py` and `cxr/dicom.py`, plus the installed versions of Pillow, pydicom, numpy and the "
    "pylibjpeg plugins). Any change to these decodes again into a new file, so pixels made by older decoders are "
    "never reused; old files are not deleted (remove the folder to reclaim the space). Augmentation and contrast "
    "normalisation (`contrast_norm`) run on the training device after the cache, so no config key but the image size "
    "changes it; a space that searches `image_size` has one file at the largest size it draws, and one more at the "
    "best trial's size when the final stage needs another."
)
