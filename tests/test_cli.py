"""The `ssmkit` command: help for every command, usage errors, and the demo end to end at tiny settings.

No timing or learning is asserted; the demo's tiny run is expected to fail its pass mark (exit 1).
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

import ssmkit
from ssmkit.cli import main as cli_main
from ssmkit.demo import main as demo_main


@pytest.mark.parametrize(
    "argv,expect",
    [
        (["--help"], ["usage: ssmkit", "bench", "demo"]),
        (["bench", "--help"], ["usage: ssmkit bench", "core", "step"]),
        (["bench", "core", "--help"], ["usage: ssmkit bench core", "--length"]),
        (["bench", "step", "--help"], ["usage: ssmkit bench step", "--layers", "--batch"]),
        (["demo", "--help"], ["usage: ssmkit demo", "--steps", "Exit status 0"]),
    ],
)
def test_help_exits_0(argv, expect, capsys):
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert all(text in out for text in expect), out


@pytest.mark.parametrize(
    "argv,message",
    [
        ([], "the following arguments are required: COMMAND"),
        (["frob"], "argument COMMAND: invalid choice: 'frob'"),
        (["bench"], "the following arguments are required: SUITE"),
        (["bench", "frob"], "argument SUITE: invalid choice: 'frob'"),
        (["demo", "--bogus"], "unrecognized arguments: --bogus"),
        (["demo", "--steps", "0"], "--steps must be >= 1; got 0"),
    ],
)
def test_usage_errors_exit_2_with_a_usage_line(argv, message, capsys):
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ssmkit") and message in err, err


def test_command_line_exit_status():
    # the real process exit status, through `python -m ssmkit.cli` (the `ssmkit` script calls the same main)
    src = str(pathlib.Path(ssmkit.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    ok, bad = (
        subprocess.run([sys.executable, "-m", "ssmkit.cli", arg], env=env, capture_output=True, text=True)
        for arg in ("--help", "frob")
    )
    assert ok.returncode == 0 and "usage: ssmkit" in ok.stdout
    assert bad.returncode == 2 and "usage: ssmkit" in bad.stderr


def test_command_line_user_errors_are_one_line(tmp_path):
    # a missing data file: one `ssmkit: error:` line and status 2 from the process, the traceback only when asked
    src = str(pathlib.Path(ssmkit.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    argv = [sys.executable, "-m", "ssmkit", "sysid", "--benchmark", "cascaded_tanks", "--data-folder", str(tmp_path)]
    plain = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.startswith("ssmkit: error: cascaded_tanks: dataBenchmark.csv not found"), plain.stderr
    traced = subprocess.run(argv, env=dict(env, SSMKIT_TRACEBACK="1"), capture_output=True, text=True)
    assert traced.returncode == 1 and "Traceback" in traced.stderr and "FileNotFoundError" in traced.stderr


def test_demo_runs_and_checks_step_equals_forward(capsys):
    code = demo_main(["--steps", "3", "--length", "24", "--d-model", "8", "--n-layers", "1", "--batch-size", "4"])
    out = capsys.readouterr().out
    assert "trivial baseline" in out and "trained 3 steps in" in out and "steps/s" in out
    assert "FAIL (pass mark 10%)" in out and "demo FAILED" in out and code == 1  # 3 steps learn nothing
    assert "equal to fp32 precision" in out and "NOT equal" not in out


def test_train_and_compare_help_and_budget_parsing(capsys):
    from ssmkit.train import TrainConfig
    from ssmkit.train.commands import budget_config, parse_budget, per_model_options, results_table

    assert cli_main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--task" in out and "--train.lr" in out and "--resume" in out
    assert cli_main(["compare", "--help"]) == 0
    assert "--budget" in capsys.readouterr().out
    assert parse_budget("500") == (500, None) and parse_budget("90s") == (None, 90.0)
    assert parse_budget("1.5h") == (None, 5400.0) and parse_budget("5m") == (None, 300.0)
    with pytest.raises(ValueError, match="--budget must be"):
        parse_budget("ten")
    # a step budget under the warm-up failed ('warmup_steps must be < max_steps') before the warm-up was shortened
    assert (budget_config(TrainConfig(), 50, None).max_steps, budget_config(TrainConfig(), 50, None).warmup_steps) == (50, 5)
    assert budget_config(TrainConfig(warmup_steps=10), 500, None).warmup_steps == 10
    assert budget_config(TrainConfig(), None, 90.0).max_time == 90.0
    assert per_model_options({"s4d": {"d_state": 4}}, ["s4d", "lru"]) == {"s4d": {"d_state": 4}, "lru": {}}
    # flat options and misspelt names were ignored without a word: every model ran with its defaults
    with pytest.raises(ValueError, match=r"keyed by layer name, e.g. '\{s4d: \{d_state: 32\}\}'; got the values of \['d_state'\]"):
        per_model_options({"d_state": 4}, ["s4d", "lru"])
    with pytest.raises(ValueError, match=r"entries for \['s4D'\], which are not layer names"):
        per_model_options({"s4D": {"d_state": 4}}, ["s4d", "lru"])
    table = results_table([{"model": "s4d", "test_accuracy": 0.5, "parameters": 1234, "steps": 10,
                            "train_seconds": 2.0, "tokens_per_second": 1e4}])
    assert "| s4d | 50.00 % | 1,234 | 10 | 2.0 | 10,000 |" in table


def test_train_passes_test_weights_through(tmp_path, capsys):
    pytest.importorskip("lightning")
    tiny = ["train", "--task", "adding", "--task_options", "{length: 12, n_train: 64, n_val: 32, n_test: 32}",
            "--model", "s4d", "--d_model", "4", "--n_layers", "1", "--train.batch_size", "16", "--train.max_steps", "4",
            "--train.warmup_steps", "0", "--train.val_every", "2", "--train.checkpoint_every", "0", "--no-progress"]
    assert cli_main(tiny + ["--train.test_weights", "best_val", "--out", str(tmp_path / "a")]) == 0
    result = json.loads((tmp_path / "a" / "result.json").read_text())
    assert json.loads((tmp_path / "a" / "train.json").read_text())["test_weights"] == "best_val"
    assert result["test_weights"] == "best_val" and result["best_val_step"] in (2, 4)
    assert result["test_mse"] == result["test_mse_best_val"] and "test_mse_final" in result
    with pytest.raises(ValueError, match=r"test_weights must be one of \('final', 'best_val'\); got 'best'"):
        cli_main(tiny + ["--train.test_weights", "best", "--out", str(tmp_path / "b")])


def _default_out(help_text: str) -> str:
    """The default output folder that ``--out``'s help states."""
    import re

    found = re.search(r"--out OUT\s+output folder \(default (\S+?)[;)]", " ".join(help_text.split()))
    assert found, help_text
    return found.group(1)


def test_train_and_compare_write_where_their_help_says(tmp_path, monkeypatch, capsys):
    # compare's --out help said runs/<task>-<model> (train's default) while compare wrote runs/compare-<task>
    pytest.importorskip("lightning")
    monkeypatch.chdir(tmp_path)
    tiny = ["--task", "adding", "--task_options", "{length: 12, n_train: 32, n_val: 16, n_test: 16}", "--d_model", "4",
            "--n_layers", "1", "--train.batch_size", "16", "--train.val_every", "0", "--train.checkpoint_every", "0",
            "--no-progress"]
    assert cli_main(["compare", "--help"]) == 0
    compare_out = _default_out(capsys.readouterr().out)
    assert cli_main(["train", "--help"]) == 0
    train_out = _default_out(capsys.readouterr().out)
    assert (compare_out, train_out) == ("runs/compare-<task>", "runs/<task>-<model>")
    assert cli_main(["compare", *tiny, "--models", "s4d,lru", "--budget", "2"]) == 0
    assert cli_main(["train", *tiny, "--model", "s4d", "--train.max_steps", "2", "--train.warmup_steps", "0"]) == 0
    runs = tmp_path / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["adding-s4d", "compare-adding"]
    assert (runs / "compare-adding" / "results.json").is_file() and (runs / "compare-adding" / "lru" / "result.json").is_file()
    assert (runs / "adding-s4d" / "result.json").is_file()


def test_compare_refuses_model_instead_of_dropping_it(tmp_path, capsys):
    # compare's help offers --model ("the layer name of every block"), but every run took its layer from --models:
    # `--model s5 --models s4d` trained s4d alone and said nothing
    argv = ["compare", "--task", "adding", "--models", "s4d", "--budget", "2", "--out", str(tmp_path / "c")]
    for given in (["--model", "s5"], ["--model=s5"], ["--model+", "s5"]):
        assert cli_main(argv + given) == 2
        assert "compare takes the layers to compare from --models" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_compare_fail_below_needs_an_accuracy(tmp_path, capsys):
    # on a regression task every result lacks an accuracy and was read as 0 %: every model 'failed' the pass mark
    argv = ["compare", "--task", "adding", "--models", "s4d", "--budget", "2", "--out", str(tmp_path / "c"),
            "--fail-below", "0.3"]
    assert cli_main(argv) == 2
    assert "'adding' is a regression task" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
    # a classification task keeps its pass mark: an untrained model is below 99 % and above 0 %
    pytest.importorskip("lightning")
    pytest.importorskip("sklearn")
    tiny = ["compare", "--task", "digits", "--models", "s4d", "--budget", "2", "--d_model", "4", "--n_layers", "1",
            "--train.batch_size", "16", "--train.val_every", "0", "--train.checkpoint_every", "0", "--no-progress"]
    assert cli_main(tiny + ["--out", str(tmp_path / "d1"), "--fail-below", "0.99"]) == 1
    assert "below the pass mark 99%: s4d" in capsys.readouterr().err
    assert cli_main(tiny + ["--out", str(tmp_path / "d2"), "--fail-below", "0.0"]) == 0


def test_compare_checks_every_name_before_training(tmp_path, capsys):
    # `--models s4d,s4D` trained s4d, then failed on s4D: a typo at the end of a long list cost every run before it
    argv = ["compare", "--task", "digits", "--models", "s4d,s4D", "--budget", "2", "--out", str(tmp_path / "c")]
    assert cli_main(argv) == 2
    assert "--models names unknown layers ['s4D']" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
