"""tune.budget: durations, the final stage's estimate and the cut-off, with a fake clock; budget.json across sessions."""

from __future__ import annotations

import dataclasses

import pytest

from tune.budget import FINISH_S, MEMBER_START_S, ROBUSTNESS_EPOCHS, SCORING_EPOCHS, Budget, parse_duration


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("text, seconds", [("75s", 75), ("45m", 2700), ("2h", 7200), ("1h30m", 5400), ("90", 90),
                                           ("1.5h", 5400), ("0s", 0)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "45 minutes", "m45", "1x", "-5m"])
def test_not_durations(text):
    assert parse_duration(text) is None


def test_trials_stop_starting_when_what_is_left_is_what_the_final_stage_needs():
    clock = FakeClock()
    budget = Budget(total_s=600, final_members=3, final_epochs=4, member_slots=2, robustness_passes=40, clock=clock)
    assert budget.final_estimate() is None and not budget.decide_no_more_trials()  # nothing measured: go on
    for seconds in (10, 10, 10, 12, 30):  # epochs measured so far: the members at the median, one more at the p90
        budget.note_epoch(seconds)
    epoch, bound = budget.epoch_estimate(), budget.next_epoch_bound()
    assert epoch == 10 and 12 < bound <= 30
    member = (4 + ROBUSTNESS_EPOCHS) * epoch  # no shifted val pass measured: the robustness bank at one epoch
    final = MEMBER_START_S + 2 * member + 3 * SCORING_EPOCHS * epoch + FINISH_S  # 3 members, 2 at once: 2 waves
    assert budget.final_estimate() == pytest.approx(final)
    skipping = dataclasses.replace(budget, robustness_passes=0)  # --no-robustness
    assert skipping.final_estimate() == pytest.approx(final - 2 * ROBUSTNESS_EPOCHS * epoch)
    clock.now += 600 - final - MEMBER_START_S - bound - 1  # a new trial's first epoch still fits
    assert not budget.decide_no_more_trials() and budget.decision is None
    assert not budget.decide_stop("a")  # in flight: one more epoch fits too
    clock.now += 2
    assert budget.starts_trials() and budget.decision is None and not budget.was_stopped("a")  # questions change nothing
    assert budget.decide_no_more_trials() and not budget.starts_trials() and budget.decision["final_estimate_s"] == pytest.approx(final, abs=0.1)
    assert "no new trials" in budget.decision_text()
    assert not budget.decide_stop("a")
    clock.now += MEMBER_START_S  # now one more epoch of a trial in flight would eat into the final stage
    assert budget.decide_stop("a") and budget.stopped == {"a"}
    clock.now -= 10_000
    assert budget.decide_no_more_trials()  # once decided, it stays decided


def test_a_budget_spent_before_any_epoch_ends_the_starts_and_says_so(tmp_path):
    """A loaded machine, or an --extend round with a short budget of its own: no epoch measured when the time is up.
    The decision is recorded (it was not, and printing it crashed the run), saved, and the trials in flight stop at
    their first epoch."""
    clock = FakeClock()
    budget = Budget(total_s=45, final_members=3, final_epochs=2, member_slots=2, clock=clock, path=tmp_path / "budget.json")
    clock.now += 44
    assert not budget.decide_no_more_trials() and budget.starts_trials()  # nothing measured, time left: go on
    clock.now += 2
    assert budget.decide_no_more_trials() and not budget.starts_trials()
    assert budget.decision["final_estimate_s"] is None and budget.decision["left_s"] == -1.0
    assert "before any trial finished an epoch: no new trials" in budget.decision_text()
    budget.save()
    budget.note_epoch(20.0, trial_id="a", score=0.5)
    assert budget.decide_stop("a")


def test_the_first_wave_starts_processes_as_long_as_the_search_s_first_trial_waited_for_its_first_epoch():
    clock = FakeClock()
    budget = Budget(total_s=600, final_members=3, final_epochs=2, member_slots=1, robustness_passes=40, clock=clock)
    clock.now += 30  # imports, data, Ray
    budget.note_search_start()
    clock.now += 12 + 10  # the first trial's process start, then its first epoch of 10 s
    budget.note_epoch(10)
    clock.now += 50
    budget.note_epoch(10)  # later epochs measure nothing more
    assert budget.start_up_s == pytest.approx(12)
    member = (2 + ROBUSTNESS_EPOCHS) * 10
    assert budget.final_estimate() == pytest.approx(12 + 3 * member + 3 * SCORING_EPOCHS * 10 + FINISH_S)  # 3 waves, one start


def test_the_robustness_step_is_planned_at_the_leading_trial_s_shifted_val_pass():
    """robustness_passes shifted val passes per member, at the median pass of the trial with the best score (the
    members train its config), not at an epoch: what the step costs depends on the val and test films, not train's;
    each member runs it in its own task, so it is planned in the members' waves."""
    budget = Budget(total_s=600, final_members=2, final_epochs=1, member_slots=2, robustness_passes=40,
                    clock=FakeClock())
    budget.note_epoch(10, "slow", 0.5, shift_s=2.0)
    budget.note_epoch(10, "slow", 0.6, shift_s=4.0)
    assert budget.robustness_estimate(10) == pytest.approx(40 * 3.0)
    budget.note_epoch(10, "fast", 0.9, shift_s=0.5)  # the new leader
    budget.note_epoch(10, "slow", 0.7, shift_s=3.0)  # still behind it
    assert budget.robustness_estimate(10) == pytest.approx(40 * 0.5)
    # 2 members at once: one wave of an epoch and the bank each, then the driver's scoring of both
    assert budget.final_estimate() == pytest.approx(MEMBER_START_S + 10 + 40 * 0.5 + 2 * SCORING_EPOCHS * 10 + FINISH_S)
    assert dataclasses.replace(budget, robustness_passes=0).robustness_estimate(10) == 0  # --no-robustness


def test_a_resumed_session_continues_with_what_is_left_and_extend_gets_a_budget_of_its_own(tmp_path):
    clock = FakeClock()
    path = tmp_path / "budget.json"
    first = Budget.resumed(path, total_s=300, final_members=1, final_epochs=1, member_slots=1, clock=clock)
    clock.now += 120
    first.stopped.add("t1")
    first.save()  # the driver is killed after this
    clock.now += 3600  # the time between the sessions is not spent
    second = Budget.resumed(path, total_s=300, final_members=1, final_epochs=1, member_slots=1, clock=clock)
    assert second.left() == pytest.approx(180) and second.stopped == {"t1"}
    extend = Budget.resumed(path, fresh=True, total_s=60, final_members=1, final_epochs=1, member_slots=1, clock=clock)
    assert extend.left() == pytest.approx(60) and extend.stopped == {"t1"}


def test_when_the_final_stage_does_not_fit_its_members_get_the_epochs_that_do():
    clock = FakeClock()
    budget = Budget(total_s=100, final_members=1, final_epochs=4, member_slots=1, robustness_passes=40, clock=clock)
    assert budget.epochs_that_fit(4) == 4  # nothing measured: as planned
    budget.note_epoch(10)
    assert budget.epochs_that_fit(4) == 4  # 5 + 40 + 12.5 (scoring, the robustness bank at an epoch) + 7 s fit in 100
    clock.now += 50
    assert budget.epochs_that_fit(4) == 2  # 50 s left: 5 + 20 + 12.5 + 7
    clock.now += 40
    assert budget.epochs_that_fit(4) == 1  # nothing fits: one epoch, never none


def test_the_members_are_planned_at_the_leading_trial_s_epoch_time():
    """The members train the leading config: its epochs plan them, not the median over configs of other sizes."""
    budget = Budget(total_s=600, final_members=1, final_epochs=1, member_slots=1, clock=FakeClock())
    budget.note_epoch(10)
    assert budget.epoch_estimate() == 10  # no score yet: every epoch
    for seconds, trial, score in ((30, "big", 0.4), (30, "big", 0.5), (4, "small", 0.6), (6, "small", 0.55)):
        budget.note_epoch(seconds, trial, score)
    assert budget.epoch_estimate() == 5 and budget.next_epoch_bound() > 10  # "small" leads; the p90 is every trial's
    budget.note_epoch(30, "big", 0.9)
    assert budget.epoch_estimate() == 30


def test_with_a_minimised_metric_the_lowest_scoring_trial_leads():
    """--metric val_loss: the leading trial is the one with the lowest loss (cxr.monitors), not the highest."""
    budget = Budget(total_s=600, final_members=1, final_epochs=1, member_slots=1, clock=FakeClock(), metric="val_loss")
    for seconds, trial, loss in ((30, "big", 0.4), (30, "big", 0.5), (4, "small", 0.6), (6, "small", 0.55)):
        budget.note_epoch(seconds, trial, loss)
    assert budget.epoch_estimate() == 30  # "big" leads with 0.4
    budget.note_epoch(6, "small", 0.2)
    assert budget.epoch_estimate() == 6


def test_the_final_plan_is_estimated_for_the_epochs_the_members_run_and_saved(tmp_path):
    import json

    clock = FakeClock()
    budget = Budget(total_s=100, final_members=1, final_epochs=4, member_slots=1, clock=clock,
                    path=tmp_path / "budget.json")
    budget.note_epoch(10)
    clock.now += 50
    budget.note_final_plan(budget.epochs_that_fit(4))  # 50 s left: 5 + 3 x 10 + 2.5 + 7 fit, 4 epochs do not
    assert budget.final_plan == {"epochs": 3, "left_s": 50.0, "estimate_s": 44.5}
    assert budget.final_estimate() == 54.5  # the planned 4 epochs' estimate, what the decision would have said
    budget.save()
    assert json.loads((tmp_path / "budget.json").read_text())["final_plan"] == budget.final_plan


def test_a_last_wave_of_fewer_members_is_planned_faster_where_the_trials_waited_for_cores():
    """3 members in 2 slots: 2, then 1. Where the trials' threads got half the time they were ready to run (other
    processes took cores), the lone member gets more of its time; where they got all of it, it does not."""
    def planned(share, **changes):
        budget = Budget(**{"total_s": 600, "final_members": 3, "final_epochs": 2, "member_slots": 2,
                           "clock": FakeClock(), **changes})
        budget.note_epoch(10, "a", 0.5, run_share=share)
        return budget

    quiet, member = planned(1.0), 2 * 10
    assert quiet.final_estimate() == pytest.approx(MEMBER_START_S + 2 * member + 3 * SCORING_EPOCHS * 10 + FINISH_S)
    assert quiet.wave_factor(1) == 1 and planned(float("nan")).wave_factor(1) == 1  # all of its time, or unknown
    # 2 trials at once at share 0.5 had one core's worth (Ray's workers run at nice 15: other processes keep theirs):
    # a member alone gets all of its time, so its wave takes half of a full wave's
    busy = planned(0.5)
    assert busy.wave_factor(1) == pytest.approx(0.5) and busy.wave_factor(2) == 1
    assert busy.final_estimate() == pytest.approx(quiet.final_estimate() - member / 2)
    assert planned(0.2).wave_factor(1) == pytest.approx(0.5)  # 0.4 cores' worth for one member: 0.2 / 0.4
    assert planned(0.5, trials_at_once=1).wave_factor(1) == 1  # --max-concurrent 1: a wave of one is no smaller
    wide = planned(0.5, member_slots=4)  # one wave of 3 members where the search ran 4 trials at once: 2 cores' worth
    assert wide.wave_factor(3) == pytest.approx(0.5 / (2 / 3))
    assert wide.final_estimate() == pytest.approx(MEMBER_START_S + member * 0.75 + 7.5 + FINISH_S)


def test_a_leading_trial_that_ran_beside_lighter_ones_is_planned_at_the_trials_typical_contention():
    """Trials typically got half the time their threads were ready to run; the leader, beside idle or light slots,
    all of it. Members run beside members: its 5 s epochs plan as 10 s (its shifted val pass likewise), and a member
    alone in the last wave gets all of its time again."""
    budget = Budget(total_s=600, final_members=3, final_epochs=2, member_slots=2, robustness_passes=10,
                    clock=FakeClock())
    for trial, score in (("a", 0.1), ("b", 0.2), ("c", 0.3)):
        budget.note_epoch(10, trial, score, shift_s=1.0, run_share=0.5)
    budget.note_epoch(5, "lead", 0.9, shift_s=0.5, run_share=1.0)
    assert budget.contention_ratio() == pytest.approx(2) and budget.epoch_estimate() == pytest.approx(10)
    assert budget.robustness_estimate(10) == pytest.approx(10 * 0.5 * 2)
    assert budget.wave_factor(1) == pytest.approx(0.5)
    member = 2 * 10 + 10
    assert budget.final_estimate() == pytest.approx(MEMBER_START_S + member * 1.5 + 3 * SCORING_EPOCHS * 10 + FINISH_S)
