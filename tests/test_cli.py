"""cxr.cli: one range rule per value, whichever command line takes it, and one way bad input ends a CLI."""

from __future__ import annotations

import pytest

from cxr import predict, recalibrate
from cxr.cli import check_range, cli_entry
from cxr.errors import InputError
from tune.settings import RunSettings, resolve


@pytest.mark.parametrize("key, value", [("target_recall", 1.0), ("target_recall", 0.0), ("recall_confidence", 0.3),
                                        ("recall_confidence", 1.0), ("max_pixels", 0)])
def test_tune_run_and_recalibrate_judge_a_value_by_the_same_rule(tmp_path, capsys, key, value):
    flag = "--" + key.replace("_", "-")
    with pytest.raises(InputError) as judged:
        check_range(key, value, flag)
    with pytest.raises(InputError) as by_run:
        resolve(RunSettings(dataset="synthetic", results_dir=str(tmp_path), **{key: value}), False, 0)
    assert str(by_run.value) == str(judged.value)
    argv = ["--model", str(tmp_path), "--data", str(tmp_path), "--out", str(tmp_path / "out"), flag, str(value)]
    assert recalibrate.main(argv) == 2
    assert capsys.readouterr().err.strip() == f"error: {judged.value}"


def test_predict_refuses_a_max_pixels_below_one_by_the_shared_rule(tmp_path, capsys):
    assert predict.main([str(tmp_path), "--model", str(tmp_path), "--max-pixels", "0"]) == 2
    assert "--max-pixels 0 is out of range: use a positive pixel count" in capsys.readouterr().err


def test_a_cli_entry_turns_input_errors_into_one_line_and_exit_2(capsys):
    @cli_entry
    def main(argv):
        if argv:
            raise InputError("bad thing: do the other thing")
        return 0

    assert main([]) == 0
    assert main(["x"]) == 2
    assert capsys.readouterr().err == "error: bad thing: do the other thing\n"
