"""--time-budget: the arithmetic of a search sized by the time it has (no Ray here; tests drive it with a fake clock).

The whole command aims to end within the budget. The search stops starting trials once the time left is what the
rest needs: the final stage (K members of E epochs, in waves of the slots free for them, at the epoch time measured
so far, plus the start-up of the first wave's processes, measured on the search's first trial) and the fixed finish
(the report, Ray's shutdown, the process's exit). A last wave of fewer members than the search ran trials at once
is planned faster where the trials' threads waited for cores (cxr.run_share): fewer members share what the trials
had. A trial in flight stops at the first epoch boundary after which one more epoch would no longer fit; it is
"budget"-stopped, its best epoch counts.

One Budget per session, made and opened by the experiment and handed to what needs it (the searcher's gate, the
stopper, the tracking callback, the final stage). Its questions (starts_trials, was_stopped, left, ...) change
nothing; what changes it is named as an action (note_epoch, decide_no_more_trials, decide_stop, save).
"""

from __future__ import annotations

import math
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from cxr.monitors import DEFAULT_METRIC, improves

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# calibrated on the demo (BENCHMARKS.md, time budget): the rest of a run beyond its members' epochs
MEMBER_START_S = 5.0  # a process start and data fetch, until the search's first trial has measured one
# each member scores val and test, mirrored, then calibration, intervals and tables (0.25 epoch) ...
SCORING_EPOCHS = 0.25
# ... and, unless --no-robustness, each member scores its films under the robustness bank where it trains: planned at
# the leading trial's shifted val pass (shift_time_s) times Budget.robustness_passes; one epoch until one is measured
ROBUSTNESS_EPOCHS = 1.0
FINISH_S = 7.0  # the report, Ray's shutdown and the process's exit (6-7 s on the demo)
MAX_TRIALS = 1000  # --num-samples when a budget is given without it ("as many as fit")


def parse_duration(text: str) -> float | None:
    """'45m', '2h', '75s', '1h30m', '90' (seconds) -> seconds; None when it is not a duration."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhd])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * UNITS[u] for n, u in parts)


@dataclass
class Budget:
    """One driver session's view of the budget: total seconds, what earlier sessions spent, this session's clock."""

    total_s: float
    final_members: int
    final_epochs: int
    member_slots: int  # final members that run at once
    trials_at_once: int | None = None  # trials the search runs at once (--max-concurrent, if lower); None: member_slots
    metric: str = DEFAULT_METRIC  # the trial score: its direction (cxr.monitors) names the leading trial
    # the final stage's robustness step per member, in shifted val passes (the experiment derives it from the bank and
    # the split sizes); 0: --no-robustness
    robustness_passes: float = 0.0
    spent_before_s: float = 0.0
    clock: callable = time.monotonic
    started: float = field(default=None)
    epoch_s: list[float] = field(default_factory=list)
    trial_epoch_s: dict[str, list[float]] = field(default_factory=dict)
    trial_best: dict[str, float] = field(default_factory=dict)  # each trial's best score so far
    trial_shift_s: dict[str, list[float]] = field(default_factory=dict)  # each trial's shifted val passes
    trial_run_share: dict[str, list[float]] = field(default_factory=dict)  # each trial's epochs' cpu_run_share
    run_shares: list[float] = field(default_factory=list)  # every epoch's: how much the trials got of the cores
    search_started_s: float | None = None  # spent() when this session's search started
    start_up_s: float | None = None  # the first trial's wait for its first epoch, less the epoch: a process start
    stopped: set[str] = field(default_factory=set)  # trials stopped by the budget
    decision: dict | None = None  # when and why the search stopped starting trials
    final_plan: dict | None = None  # the final stage as it started: its members' epochs, their estimate, the time left
    path: Path | None = None  # budget.json of the experiment (what --resume continues from)
    spending: dict = field(default_factory=dict)  # search_s, final_stage_s, ... of the sessions so far
    _p90: float | None = field(default=None, repr=False)
    _median: float | None = field(default=None, repr=False)
    _shift_median: float | None = field(default=None, repr=False)
    _share_median: float | None = field(default=None, repr=False)  # the leading trial's
    _typical_share: float | None = field(default=None, repr=False)  # every trial's epochs'
    _leader: str | None = field(default=None, repr=False)  # the trial with the best score so far (the metric's direction)

    def __post_init__(self):
        if self.started is None:
            self.started = self.clock()

    def spent(self) -> float:
        return self.spent_before_s + self.clock() - self.started

    def left(self) -> float:
        return self.total_s - self.spent()

    def note_search_start(self) -> None:
        self.search_started_s = self.spent()

    def note_epoch(self, seconds: float, trial_id: str | None = None, score: float | None = None,
                   shift_s: float | None = None, run_share: float | None = None) -> None:
        """Every epoch of every trial (the stopper's hot path): the planning estimates are updated here, once.
        shift_s: the epoch's shifted val pass (shift_time_s), what the robustness step is planned with; run_share:
        its cpu_run_share, what a last wave of fewer members is planned with."""
        if seconds and seconds > 0:
            if self.start_up_s is None and self.search_started_s is not None:
                self.start_up_s = max(0.0, self.spent() - self.search_started_s - seconds)
            self.epoch_s.append(float(seconds))
            many = len(self.epoch_s) >= 2
            self._p90 = statistics.quantiles(self.epoch_s, n=10, method="inclusive")[-1] if many else self.epoch_s[0]
            if trial_id is not None:
                self.trial_epoch_s.setdefault(trial_id, []).append(float(seconds))
                if (isinstance(score, (int, float)) and math.isfinite(score)
                        and improves(self.metric, score, self.trial_best.get(trial_id, math.nan))):
                    self.trial_best[trial_id] = float(score)
                    # bests only improve: the leader changes only to a trial that just passed it (no scan per epoch)
                    if self._leader is None or improves(self.metric, score, self.trial_best[self._leader]):
                        self._leader = trial_id
            self._median = statistics.median(self.trial_epoch_s[self._leader] if self._leader else self.epoch_s)
            if trial_id is not None and isinstance(shift_s, (int, float)) and shift_s > 0:
                self.trial_shift_s.setdefault(trial_id, []).append(float(shift_s))
            if trial_id is not None and isinstance(run_share, (int, float)) and 0 < run_share <= 1:
                self.trial_run_share.setdefault(trial_id, []).append(float(run_share))
                self.run_shares.append(float(run_share))
                self._typical_share = statistics.median(self.run_shares)
            lead = self._leader or trial_id
            self._shift_median = _median_of(self.trial_shift_s.get(lead), self._shift_median)
            self._share_median = _median_of(self.trial_run_share.get(lead), self._share_median)

    def epoch_estimate(self) -> float | None:
        """The members' epoch time the final stage is planned with: the median epoch of the leading trial (the
        members train its config; a small config's epochs are a fraction of a large one's), of every trial until one
        has a score; at the trials' typical contention for the cores (contention_ratio)."""
        return None if self._median is None else self._median * self.contention_ratio()

    def contention_ratio(self) -> float:
        """The leading trial's median run share over every trial's: a trial that ran beside lighter ones (or idle
        slots) got more of the cores than members beside members will, so its epochs are planned that much slower.
        The work of an epoch (run share x wall time) is the same either way. 1 while either is unknown."""
        if self._share_median is None or self._typical_share is None:
            return 1.0
        return self._share_median / self._typical_share

    def next_epoch_bound(self) -> float | None:
        """What one more epoch of some trial may take: the 90th percentile of the epochs measured so far."""
        return self._p90

    def final_estimate(self, epochs: int | None = None, epoch: float | None = None) -> float | None:
        """The final stage's seconds with `epochs` per member (default: the planned ones) of `epoch` seconds
        (default: the planning estimate). Only the first wave starts processes: later waves reuse them (Ray keeps a
        finished task's worker for the next task)."""
        epoch = epoch or self.epoch_estimate()
        if epoch is None:
            return None
        full, last = divmod(self.final_members, max(1, self.member_slots))
        per_member = self.final_epochs if epochs is None else epochs
        start = MEMBER_START_S if self.start_up_s is None else self.start_up_s
        # each member scores its films under the robustness bank in its own task, so that step runs in the waves too
        member = per_member * epoch + self.robustness_estimate(epoch)
        waves = full * member + (member * self.wave_factor(last) if last else 0.0)
        return start + waves + self.final_members * SCORING_EPOCHS * epoch + FINISH_S

    def wave_factor(self, members: int) -> float:
        """A wave of `members` members' time over one of as many as the search ran trials at once. Ray starts its
        workers at nice 15 (RAY_worker_niceness), so other processes take the cores they want first and the trials
        share what is left: at_once trials at the trials' typical run share had at_once x share trials' worth of
        cores, which fewer members split, each getting at most all of its time. 1 when the trials never waited for a
        core (or it is unknown) or the wave is no smaller."""
        share, at_once = self._typical_share, self.trials_at_once or self.member_slots
        if share is None or share >= 1 or members >= at_once:
            return 1.0
        return share / min(1.0, at_once * share / members)

    def robustness_estimate(self, epoch: float) -> float:
        """One member's robustness step: robustness_passes shifted val passes at the leading trial's median (the
        members score with its config; at the typical contention, as its epochs), one epoch while no trial has
        measured a pass, none under --no-robustness."""
        if not self.robustness_passes:
            return 0.0
        if self._shift_median is None:
            return ROBUSTNESS_EPOCHS * epoch
        return self.robustness_passes * self._shift_median * self.contention_ratio()

    def epochs_that_fit(self, planned: int) -> int:
        """When the search is over: the most epochs per member (at most planned, at least 1) whose final stage fits in
        the time left."""
        if not self.epoch_s:
            return planned
        return next((e for e in range(planned, 0, -1) if self.final_estimate(e) <= self.left()), 1)

    def note_final_plan(self, epochs: int) -> None:
        """The final stage starts with `epochs` per member: what it is estimated to take then (the decision's estimate
        was for the planned epochs, at what had been measured by that moment)."""
        estimate = self.final_estimate(epochs)
        self.final_plan = {"epochs": epochs, "left_s": round(self.left(), 1),
                           "estimate_s": None if estimate is None else round(estimate, 1)}

    def starts_trials(self) -> bool:
        """Whether trials may still start (no decision yet). A question: nothing changes."""
        return self.decision is None

    def was_stopped(self, trial_id: str) -> bool:
        return trial_id in self.stopped

    def decide_no_more_trials(self) -> bool:
        """Decides, once, that no trial starts any more when the time left only covers the rest (a new trial's first
        epoch included); True from that decision on."""
        if self.decision is not None:
            return True
        final, left = self.final_estimate(), self.left()
        if final is None:  # no epoch measured yet: only a spent budget stops the starts
            if left > 0:
                return False
            epoch = None
        else:
            # a trial started now: its start (CPU trials reuse a finished trial's process) and first epoch
            if left > final + MEMBER_START_S + self.next_epoch_bound():
                return False
            final, epoch = round(final, 1), round(self.epoch_estimate(), 2)
        self.decision = {"at_s": round(self.spent(), 1), "left_s": round(left, 1), "final_estimate_s": final,
                         "epoch_estimate_s": epoch, "epochs_measured": len(self.epoch_s)}
        return True

    def decide_stop(self, trial_id: str) -> bool:
        """At an epoch boundary: stop this trial (recorded in stopped) when one more epoch would eat into the rest's
        time; True when it is stopped."""
        final = self.final_estimate()
        if final is None or self.left() > final + self.next_epoch_bound():
            return False
        self.stopped.add(trial_id)
        return True

    def decision_text(self) -> str:
        d = self.decision
        if d["final_estimate_s"] is None:
            return (f"time budget: the {self.total_s:.0f} s were spent after {d['at_s']:.0f} s, before any trial finished "
                    "an epoch: no new trials; trials in flight stop at their first epoch, and the final stage runs "
                    "over the budget (a longer --time-budget fits it)")
        return (f"time budget: {d['left_s']:.0f} s of {self.total_s:.0f} s left after {d['at_s']:.0f} s; the final stage "
                f"needs about {d['final_estimate_s']:.0f} s ({self.final_members} member(s) x {self.final_epochs} "
                f"epoch(s) at {d['epoch_estimate_s']:.1f} s, {self.member_slots} at once, + start-up and finish): no "
                "new trials; trials in flight stop at their next epoch"
                + (f". The final stage alone overruns the budget by about {d['final_estimate_s'] - d['left_s']:.0f} s: "
                   "fewer --final-members or --final-epochs would fit it" if d["final_estimate_s"] > d["left_s"] else ""))

    def save(self) -> None:
        if self.path is None or not self.path.parent.is_dir():  # the experiment folder is made after the checks
            return
        from cxr.jsonio import write_json

        write_json(self.path, {"total_s": self.total_s, "spent_s": round(self.spent(), 1), "stopped": sorted(self.stopped),
                               "decision": self.decision, "final_plan": self.final_plan, "spending": self.spending})

    @classmethod
    def resumed(cls, path: Path, fresh: bool = False, **settings) -> Budget:
        """This session's budget: what budget.json says earlier sessions spent is taken off (none: a new budget).
        fresh (--extend): a budget of its own; only the earlier rounds' budget-stopped trials are kept."""
        from cxr.jsonio import read_json

        saved = read_json(path) if path.is_file() else {}
        stopped = set(saved.get("stopped", []))
        if fresh:
            return cls(stopped=stopped, path=path, **settings)
        return cls(spent_before_s=saved.get("spent_s", 0.0), stopped=stopped, decision=saved.get("decision"),
                   spending=saved.get("spending", {}), path=path, **settings)


    def open(self) -> None:
        """Makes this the session's budget of its experiment (self.path): the searcher, stopper and callback that Ray
        unpickles on --resume get it (__reduce__)."""
        _OPEN[_key(self.path)] = self

    def close(self) -> None:
        _OPEN.pop(_key(self.path), None)

    def __reduce__(self):
        # Ray pickles the searcher, the stopper and the callbacks with the Tune experiment and unpickles them on
        # --resume: they get the budget the resuming session opened, not a copy of the first session's
        return session_budget, (_key(self.path),)


def _median_of(values: list[float] | None, current: float | None) -> float | None:
    """The leading trial's median of what it measured; what was planned with before while it has measured none."""
    return statistics.median(values) if values else current


# The budgets open in this driver process, by budget.json path: read only when Ray unpickles what holds one.
_OPEN: dict[str, Budget] = {}


def _key(path: Path) -> str:
    return str(Path(path).resolve())


def session_budget(path: str) -> Budget | None:
    """The budget this session opened for budget.json at path (None: this session runs without one)."""
    return _OPEN.get(path)


def stopped_trials(path: Path) -> set[str]:
    """The trials budget.json says the budget stopped (earlier sessions' and rounds')."""
    from cxr.jsonio import read_json

    return set(read_json(path).get("stopped", [])) if path.is_file() else set()
