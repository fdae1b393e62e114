"""The ``ssmkit`` command's routing and exit statuses, and the demo's schedule, pass marks and report, against what
their docstrings state (probe 49, mutation testing).

Every command's entry function is replaced by a recorder, so that the routing (which function, which arguments, which
``prog``) and the exit-status rules of ``main`` and ``console`` are checked without running a command. The demo runs
with a stand-in model whose error and recurrent mismatch the test sets, and a clock that only the model moves.
"""

from __future__ import annotations

import argparse
import math
import sys
import types

import pytest
import torch

import ssmkit.analysis.commands as analysis_commands
import ssmkit.bench as bench
import ssmkit.data.commands as data_commands
import ssmkit.demo as demo
import ssmkit.memory as memory
import ssmkit.sysid.commands as sysid_commands
import ssmkit.train.commands as train_commands
from ssmkit import cli

# ---------------------------------------------------------------------------------------------------------------------
# The command


@pytest.fixture()
def entries(monkeypatch):
    """Every command's entry replaced by a recorder returning its own status; the memory switch recorded too."""
    calls = []

    def recorder(name, status):
        def entry(argv, prog=None):
            calls.append((name, list(argv), prog))
            return status
        return entry

    for module, name, status in ((train_commands, "train_main", 11), (train_commands, "compare_main", 12),
                                 (train_commands, "configs_main", 13), (analysis_commands, "analyze_main", 14),
                                 (analysis_commands, "zoo_main", 15), (sysid_commands, "sysid_main", 16),
                                 (demo, "main", 17)):
        monkeypatch.setattr(module, name, recorder(name, status))

    def run_suite(suite, argv, prog):
        calls.append(("bench", suite, list(argv), prog))
        return 18

    def run_data(args):
        calls.append(("data", args))
        return 19

    monkeypatch.setattr(bench, "run", run_suite)
    monkeypatch.setattr(data_commands, "run", run_data)
    monkeypatch.setattr(memory, "keep_freed_memory_from_env", lambda: calls.append(("keep_freed_memory",)))
    return calls


@pytest.mark.parametrize("command,entry,status", [
    ("train", "train_main", 11), ("compare", "compare_main", 12), ("configs", "configs_main", 13),
    ("analyze", "analyze_main", 14), ("zoo", "zoo_main", 15), ("sysid", "sysid_main", 16), ("demo", "main", 17)])
def test_each_command_gets_its_own_options_and_prog(entries, command, entry, status):
    # the options after the command reach its entry unparsed (--help included: add_help=False), in order
    rest = ["--help", "--steps", "3", "x", "--flag=1"]
    assert cli.main([command, *rest]) == status
    prog = "ssmkit demo" if command == "demo" else f"ssmkit {command}"
    assert entries == [("keep_freed_memory",), (entry, rest, prog)]
    entries.clear()
    assert cli.main([command]) == status and entries == [("keep_freed_memory",), (entry, [], prog)]


@pytest.mark.parametrize("suite", sorted(bench.SUITES))
def test_bench_passes_the_suite_and_its_options(entries, suite):
    assert cli.main(["bench", suite, "--repeats", "2", "--help"]) == 18
    assert entries == [("keep_freed_memory",), ("bench", suite, ["--repeats", "2", "--help"], f"ssmkit bench {suite}")]


def test_tasks_and_data_are_parsed_here(entries, tmp_path, capsys):
    assert cli.main(["tasks", "--root", str(tmp_path)]) == 19
    (_, (_, args)) = entries
    assert isinstance(args, argparse.Namespace) and args.command == "tasks" and args.root == str(tmp_path)
    entries.clear()
    assert cli.main(["data", "get", "mnist", "--root", str(tmp_path)]) == 19
    assert entries[1][1].command == "data" and entries[1][1].root == str(tmp_path)
    # an option that neither takes: argparse's usage error, status 2, and the data command is not run
    entries.clear()
    assert cli.main(["tasks", "--bogus", "1"]) == 2
    assert entries == [("keep_freed_memory",)]
    err = capsys.readouterr().err
    assert err.startswith("usage: ssmkit") and "unrecognized arguments: --bogus 1" in err


def test_the_top_level_parser(capsys):
    parser = cli.build_parser()
    assert parser.prog == "ssmkit" and parser.epilog == "Run 'ssmkit COMMAND --help' for a command's options."
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert list(sub.choices) == ["train", "compare", "configs", "bench", "analyze", "zoo", "demo", "tasks", "data",
                                 "sysid"]
    assert sub.dest == "command" and sub.required and sub.metavar == "COMMAND"
    helps = {a.dest: a.help for a in sub._choices_actions}
    assert all(helps[name] for name in sub.choices), helps
    # the commands that parse their own options do not take --help here; bench does, and lists its suites
    own = [name for name, p in sub.choices.items() if not any(isinstance(a, argparse._HelpAction) for a in p._actions)]
    assert own == ["train", "compare", "configs", "analyze", "zoo", "demo", "sysid"]
    assert "Run a performance suite" in sub.choices["bench"].description
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "commands:" in out and "Run 'ssmkit COMMAND --help' for a command's options." in out
    for name in sub.choices:
        assert f"    {name}" in out and helps[name].split(":")[0] in " ".join(out.split())


@pytest.mark.parametrize("code,status", [(None, 0), (0, 0), (3, 3), (2, 2), ("stopped: a message", 1)])
def test_a_command_exiting_gives_its_status(entries, monkeypatch, code, status):
    def stops(argv, prog=None):
        raise SystemExit(code)

    monkeypatch.setattr(train_commands, "train_main", stops)
    assert cli.main(["train"]) == status


def test_main_reads_the_process_arguments(entries, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["ssmkit", "zoo", "--format", "csv"])
    assert cli.main() == 15 and entries[-1] == ("zoo_main", ["--format", "csv"], "ssmkit zoo")
    monkeypatch.setattr(sys, "argv", ["ssmkit", "demo"])
    assert cli.main([]) == 2  # an explicit empty argv is not the process's


def test_main_reports_a_malformed_memory_switch_before_any_command(entries, monkeypatch, capsys):
    def malformed():
        raise ValueError("SSMKIT_KEEP_FREED_MEMORY must be 0 or 1; got 'x'")

    monkeypatch.setattr(memory, "keep_freed_memory_from_env", malformed)
    assert cli.main(["demo"]) == 2 and entries == []
    assert capsys.readouterr().err == "ssmkit: error: SSMKIT_KEEP_FREED_MEMORY must be 0 or 1; got 'x'\n"


@pytest.mark.parametrize("error", [FileNotFoundError("data.csv not found"), ValueError("--dt must be > 0")])
def test_console_reports_a_user_error_in_one_line(monkeypatch, capsys, error):
    def fails():
        raise error

    monkeypatch.setattr(cli, "main", fails)
    for setting in (None, "0", "yes"):
        if setting is None:
            monkeypatch.delenv("SSMKIT_TRACEBACK", raising=False)
        else:
            monkeypatch.setenv("SSMKIT_TRACEBACK", setting)
        assert cli.console() == 2
        assert capsys.readouterr().err == f"ssmkit: error: {error}\n(set SSMKIT_TRACEBACK=1 for where it was raised)\n"
    monkeypatch.setenv("SSMKIT_TRACEBACK", "1")
    with pytest.raises(type(error), match=str(error)):
        cli.console()


def test_console_passes_other_errors_and_the_status_through(monkeypatch, capsys):
    monkeypatch.setattr(cli, "main", lambda: 7)
    assert cli.console() == 7

    def bug():
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "main", bug)
    monkeypatch.delenv("SSMKIT_TRACEBACK", raising=False)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.console()
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------------------------------------------------------------
# The demo


def test_demo_options_and_defaults():
    args = demo.parse_args([], "p")
    assert vars(args) == {"steps": demo.STEPS, "length": 200, "layer": "s4d", "d_model": 64, "n_layers": 2,
                          "batch_size": 32, "lr": 3e-3, "seed": 0}
    assert demo.STEPS == 3000 and (demo.DECAY_FROM, demo.PASS_FRACTION, demo.STEP_TOLERANCE) == (0.8, 0.10, 1e-5)
    given = ["--steps", "1", "--length", "5", "--layer", "lru", "--d-model", "3", "--n-layers", "4", "--batch-size",
             "6", "--lr", "0.5", "--seed", "9"]
    assert vars(demo.parse_args(given, "p")) == {"steps": 1, "length": 5, "layer": "lru", "d_model": 3, "n_layers": 4,
                                                 "batch_size": 6, "lr": 0.5, "seed": 9}
    for bad in (["--steps", "0"], ["--steps", "-2"], ["--layer", "nope"]):
        with pytest.raises(SystemExit) as stop:
            demo.parse_args(bad, "p")
        assert stop.value.code == 2


def test_demo_help_states_the_pass_marks(capsys):
    with pytest.raises(SystemExit) as stop:
        demo.parse_args(["--help"], "ssmkit demo")
    out = " ".join(capsys.readouterr().out.split())
    assert stop.value.code == 0 and out.startswith("usage: ssmkit demo")
    assert "End-to-end demo: train a small S4D SequenceModel on the adding problem" in out
    assert "Exit status 0 when the final test MSE is <= 10% of the trivial baseline" in out


class Clock:
    """A perf_counter that only the stand-in model moves: ``train`` seconds a training forward, ``test`` a test."""

    def __init__(self, train: float, test: float):
        self.now, self.train, self.test = 100.0, train, test

    def __call__(self) -> float:
        return self.now


class StandIn(torch.nn.Module):
    """y = the adding problem's target + ``offset``; ``step`` reproduces the last output + ``step_offset``."""

    def __init__(self, clock: Clock, offset: float, step_offset: float, log: list, growth: float = 0.0,
                 shift: float | None = None, **kwargs):
        super().__init__()
        self.growth, self.trains = growth, shift is not None
        self.shift = torch.nn.Parameter(torch.tensor(shift or 0.0))  # trained only when given
        self.w = torch.nn.Parameter(torch.zeros(3, 2))
        self.bias = torch.nn.Parameter(torch.zeros(4))
        self.clock, self.offset, self.step_offset, self.log, self.kwargs = clock, offset, step_offset, log, kwargs

    def forward(self, x, return_state=True):
        self.log.append(("forward", x.shape, return_state, self.training, torch.is_grad_enabled()))
        self.clock.now += self.train_seconds if self.training else self.clock.test
        target = (x[..., 0] * x[..., 1]).sum(1, keepdim=True)
        y = target + self.offset + 0 * self.w.sum() + 0 * self.bias.sum() + (1 if self.trains else 0) * self.shift
        if self.training:
            self.offset += self.growth
        return y, ("state" if return_state else None)

    @property
    def train_seconds(self):
        return self.clock.train

    def initial_state(self, batch):
        self.log.append(("initial_state", batch))
        return torch.zeros(batch, 1)

    def step(self, x_t, state):
        self.log.append(("step", x_t.shape))
        # sequence i's step output is off by (i + 1) × step_offset
        state = state + x_t[:, :1] * x_t[:, 1:]
        rows = torch.arange(1, x_t.shape[0] + 1, dtype=state.dtype)[:, None]
        return state + self.offset + self.step_offset * rows, state


def quarters(n, length, generator=None):
    """Adding-problem-shaped data whose sums are exact in float32: values in {0, 1/4, 1/2, 3/4}, marks at t = 0, 1."""
    values = torch.randint(0, 4, (n, length), generator=generator) / 4
    marks = torch.zeros(n, length)
    marks[:, :2] = 1.0
    x = torch.stack([values, marks], -1)
    return x, values[:, :2].sum(1, keepdim=True)


def run_demo(monkeypatch, capsys, argv, offset=0.0, step_offset=0.0, train=1.0, test=10.0, data=quarters, growth=0.0,
             shift=None):
    clock = Clock(train, test)
    log, built, lambdas, groups = [], [], [], []

    def model(**kwargs):
        m = StandIn(clock, offset, step_offset, log, growth, shift, **kwargs)
        built.append((m, torch.rand(1).item()))  # a draw of the global generator when the model is built
        return m

    def param_groups(model, lr, weight_decay, verbose):
        groups.append((lr, weight_decay, verbose))
        return [{"params": list(model.parameters()), "lr": lr, "weight_decay": weight_decay}]

    class LambdaLR(torch.optim.lr_scheduler.LambdaLR):
        def __init__(self, optimizer, lr_lambda):
            lambdas.append(lr_lambda)
            super().__init__(optimizer, lr_lambda)

    monkeypatch.setattr(demo, "SequenceModel", model)
    monkeypatch.setattr(demo, "param_groups", param_groups)
    monkeypatch.setattr(demo, "adding_problem", data)
    monkeypatch.setattr(demo, "time", types.SimpleNamespace(perf_counter=clock))
    monkeypatch.setattr(torch.optim.lr_scheduler, "LambdaLR", LambdaLR)
    code = demo.main(argv, prog="ssmkit demo")
    return code, capsys.readouterr().out, log, built, lambdas, groups


def test_demo_schedule_is_constant_then_a_linear_decay_to_zero(monkeypatch, capsys):
    lambdas = {}
    for steps in (10, 7, 1):
        *_, (lr_lambda,), groups = run_demo(monkeypatch, capsys, ["--steps", str(steps), "--length", "4",
                                                                  "--batch-size", "2", "--lr", "0.25"])
        lambdas[steps] = lr_lambda
        assert groups == [(0.25, 0.01, True)]  # the ssm parameter groups at the peak lr, weight decay 0.01, listed
    lambdas[3000] = _lambda_of(monkeypatch, 3000)
    for steps, lr_lambda in lambdas.items():
        decay_start = math.floor(0.8 * steps)
        for k in range(steps + 1):
            expected = 1.0 if k < decay_start else (steps - k) / (steps - decay_start)
            assert lr_lambda(k) == pytest.approx(expected, abs=1e-15), (steps, k)


def _lambda_of(monkeypatch, steps):
    """The schedule's lambda of a ``steps``-step demo, without training (the schedule's construction ends it)."""
    lambdas = []

    class Stop(Exception):
        pass

    class LambdaLR:
        def __init__(self, optimizer, lr_lambda):
            lambdas.append(lr_lambda)
            raise Stop

    with monkeypatch.context() as m:
        m.setattr(torch.optim.lr_scheduler, "LambdaLR", LambdaLR)
        m.setattr(demo, "SequenceModel", lambda **kw: torch.nn.Linear(2, 1))
        with pytest.raises(Stop):
            demo.main(["--steps", str(steps), "--length", "4"])
    return lambdas[0]


def test_demo_trains_tests_and_times_as_it_says(monkeypatch, capsys):
    steps, batch, length = 20, 3, 6
    code, out, log, built, _, _ = run_demo(monkeypatch, capsys, ["--steps", str(steps), "--length", str(length),
                                                                "--batch-size", str(batch), "--d-model", "5",
                                                                "--n-layers", "3", "--layer", "lru", "--seed", "4"],
                                           offset=0.0, train=2.0, test=8.0)
    ((model, _),) = built
    assert model.kwargs == {"d_input": 2, "d_model": 5, "n_layers": 3, "layer": "lru", "layer_options": {},
                            "d_output": 1, "head": "regress", "pool": "last"}
    train_calls = [e for e in log if e[0] == "forward" and e[3]]
    test_calls = [e for e in log if e[0] == "forward" and not e[3]]
    # one training forward per step, on a fresh batch, without the final state and with gradients
    assert train_calls == [("forward", (batch, length, 2), False, True, True)] * steps
    # a test pass every max(1, steps // 10) = 2 steps but the last (9), the final one, all on the 1000 test sequences,
    # without gradients; then the recurrent check's parallel pass on 8 of them, with its state
    assert test_calls[:10] == [("forward", (1000, length, 2), False, False, False)] * 10
    assert test_calls[10] == ("forward", (8, length, 2), True, False, False) and len(test_calls) == 11
    assert log[-length - 1:] == [("initial_state", 8)] + [("step", (8, 2))] * length
    # the clock: 2 s a training step, 8 s a test pass; the progress lines' times are the elapsed time at each report
    lines = [line for line in out.splitlines() if line.startswith("  step")]
    assert len(lines) == 9
    for i, line in enumerate(lines):
        step = 2 * (i + 1)
        assert line.split()[:3] == ["step", str(step), f"{2.0 * step + 8.0 * i:.0f}"], line
        assert line.endswith("train MSE 0.0000  test MSE 0.0000")
    elapsed, training = 2.0 * steps + 8.0 * 9, 2.0 * steps
    assert f"trained {steps} steps in {elapsed:.1f} s, {training:.1f} s of them training " \
           f"({steps / training:.1f} steps/s)" in out
    n_params = 3 * 2 + 4 + 1
    assert f"adding problem, L={length}: lru SequenceModel, 3 blocks x d_model=5, {n_params:,} parameters" in out
    assert f"training {steps} steps of batch {batch} on {torch.get_num_threads()} CPU threads" in out
    assert "pass mark 10% of it (0.0167)" in out
    assert "final test MSE 0.0000 = 0.0% of the trivial baseline 0.167: PASS (pass mark 10%)" in out
    assert f"recurrent run, {length} steps x 8 sequences: max |step - parallel| = 0.00e+00 (relative 0.00e+00): " \
           "equal to fp32 precision (tolerance 1e-05)" in out
    assert out.rstrip().endswith("demo passed") and code == 0


def test_demo_reports_the_running_train_mse(monkeypatch, capsys):
    # every training loss is offset², so each report's train MSE (the mean since the last report) is offset²
    code, out, *_ = run_demo(monkeypatch, capsys, ["--steps", "10", "--length", "4", "--batch-size", "2"], offset=0.5)
    lines = [line for line in out.splitlines() if line.startswith("  step")]
    assert [line.split()[1] for line in lines] == [str(s) for s in range(1, 10)]  # every step: 10 // 10 = 1
    assert all(line.endswith("train MSE 0.2500  test MSE 0.2500") for line in lines)
    assert "final test MSE 0.2500 = 150.0% of the trivial baseline 0.167: FAIL (pass mark 10%)" in out
    assert "demo FAILED" in out and code == 1
    code, out, *_ = run_demo(monkeypatch, capsys, ["--steps", "3", "--length", "4"], offset=0.0)
    assert sum(line.startswith("  step") for line in out.splitlines()) == 2 and code == 0  # max(1, 3 // 10) = 1


def test_demo_train_mse_is_the_mean_since_the_last_report(monkeypatch, capsys):
    # the stand-in's offset grows by 1/4 after each training step: step k's loss is ((k - 1)/4)², exact in float32;
    # each report (every 3 steps) prints the mean over its own 3 steps, and the test MSE at the offset reached
    code, out, *_ = run_demo(monkeypatch, capsys, ["--steps", "30", "--length", "4"], growth=0.25)
    lines = [line.split() for line in out.splitlines() if line.startswith("  step")]
    assert [int(line[1]) for line in lines] == list(range(3, 30, 3))
    for line in lines:
        step = int(line[1])
        train = sum(((k - 1) / 4) ** 2 for k in range(step - 2, step + 1)) / 3
        assert line[4:] == ["train", "MSE", f"{train:.4f}", "test", "MSE", f"{(step / 4) ** 2:.4f}"], line
    assert f"final test MSE {(30 / 4) ** 2:.4f}" in out and code == 1


@pytest.mark.parametrize("mse_fraction,passed", [(0.99, True), (1.01, False)])
def test_demo_pass_mark_is_ten_percent_of_the_trivial_mse(monkeypatch, capsys, mse_fraction, passed):
    offset = math.sqrt(mse_fraction * 0.1 / 6.0)
    code, out, *_ = run_demo(monkeypatch, capsys, ["--steps", "2", "--length", "4"], offset=offset)
    assert ("PASS (pass mark 10%)" in out) is passed and ("FAIL (pass mark 10%)" in out) is not passed
    assert code == (0 if passed else 1) and out.rstrip().endswith("demo passed" if passed else "demo FAILED")


def ramp(n, length, generator=None):
    """Sequence i's target is (i mod 8 + 1)/16: one marked value at t = 0."""
    x = torch.zeros(n, length, 2)
    x[:, 0, 0] = (torch.arange(n) % 8 + 1) / 16
    x[:, 0, 1] = 1.0
    return x, x[:, 0, :1].clone()


def zeros(n, length, generator=None):
    """Data whose target is 0: the stand-in's outputs are then its offset, exactly."""
    return torch.zeros(n, length, 2), torch.zeros(n, 1)


def test_demo_pass_marks_are_inclusive(monkeypatch, capsys):
    # at exactly the pass mark (MSE 0.25 = 1.0 × 0.25, both exact in binary) the model has learned
    monkeypatch.setattr(demo, "TRIVIAL_MSE", 1.0)
    monkeypatch.setattr(demo, "PASS_FRACTION", 0.25)
    code, out, *_ = run_demo(monkeypatch, capsys, ["--steps", "2", "--length", "4"], offset=0.5)
    assert "final test MSE 0.2500 = 25.0% of the trivial baseline 1.000: PASS" in out and code == 0
    # and a recurrent run off by exactly the tolerance is equal: max |Δ| = 8 × 2^-9 over max |y| = 1/2 is 2^-5
    monkeypatch.setattr(demo, "STEP_TOLERANCE", 2.0 ** -5)
    code, out, *_ = run_demo(monkeypatch, capsys, ["--steps", "1", "--length", "3"], offset=0.5,
                             step_offset=2.0 ** -9, data=zeros)
    assert "(relative 3.12e-02): equal to fp32 precision (tolerance 3e-02)" in out and code == 0
    code, out, *_ = run_demo(monkeypatch, capsys, ["--steps", "1", "--length", "3"], offset=0.5,
                             step_offset=2.0 ** -8, data=zeros)
    assert "(relative 6.25e-02): NOT equal to fp32 precision" in out and code == 1


@pytest.mark.parametrize("step_offset,equal", [(0.0, True), (1e-3, False), (-1e-3, False)])
def test_demo_recurrent_check(monkeypatch, capsys, step_offset, equal):
    code, out, *_ = run_demo(monkeypatch, capsys, ["--steps", "2", "--length", "5"], step_offset=step_offset,
                             data=ramp)
    # the 8 sequences' outputs are 1/16 ... 8/16, their step outputs off by 1 ... 8 × step_offset: the largest
    # difference is 8 |step_offset|, relative to max |y| = 1/2
    assert f"max |step - parallel| = {8 * abs(step_offset):.2e} (relative {16 * abs(step_offset):.2e})" in out
    assert ("NOT equal to fp32 precision" in out) is not equal
    assert code == (0 if equal else 1) and out.rstrip().endswith("demo passed" if equal else "demo FAILED")


def test_demo_is_reproducible_from_its_seed(monkeypatch, capsys):
    seen = []

    def data(n, length, generator=None):
        seen.append((n, length, torch.rand(1, generator=generator).item()))
        return quarters(n, length, generator)

    runs = []
    for seed in (3, 3, 4):
        seen.clear()
        *_, built, _, _ = run_demo(monkeypatch, capsys, ["--steps", "2", "--length", "4", "--batch-size", "5",
                                                         "--seed", str(seed)], data=data)
        runs.append((list(seen), built[0][1]))
    # the test set first, then one batch a step, all from one generator seeded with --seed
    assert [(n, length) for n, length, _ in runs[0][0]] == [(1000, 4), (5, 4), (5, 4)]
    g = torch.Generator().manual_seed(3)
    expected = []
    for n in (1000, 5, 5):
        expected.append(torch.rand(1, generator=g).item())
        quarters(n, 4, g)
    assert [v for *_, v in runs[0][0]] == expected
    # the model is built right after torch.manual_seed(--seed)
    assert runs[0][1] == _first_draw(3)
    assert runs[0] == runs[1] and runs[0][0] != runs[2][0] and runs[2][1] == _first_draw(4)


def _first_draw(seed: int) -> float:
    torch.manual_seed(seed)
    return torch.rand(1).item()


def test_demo_runs_as_a_script(monkeypatch, capsys):
    import runpy

    monkeypatch.setattr(sys, "argv", ["demo", "--steps", "0"])
    monkeypatch.delitem(sys.modules, "ssmkit.demo")  # run afresh as __main__ (runpy warns about a loaded one)
    with pytest.raises(SystemExit) as stop:
        runpy.run_module("ssmkit.demo", run_name="__main__")
    assert stop.value.code == 2 and "--steps must be >= 1; got 0" in capsys.readouterr().err


def test_demo_trains_with_adamw_on_the_schedule(monkeypatch, capsys):
    # loss = shift² on zero targets: the stand-in's one trained number follows AdamW (decoupled weight decay 0.01,
    # betas 0.9, 0.999, eps 1e-8) at lr × the schedule's factor of each step, as written out here in float64
    steps, lr, wd = 20, 0.05, 0.01
    *_, built, _, _ = run_demo(monkeypatch, capsys, ["--steps", str(steps), "--length", "3", "--lr", str(lr)],
                               data=zeros, shift=0.7)
    p, m, v = 0.7, 0.0, 0.0
    decay_start = math.floor(0.8 * steps)
    for k in range(steps):
        rate = lr * (1.0 if k < decay_start else (steps - k) / (steps - decay_start))
        g = 2 * p
        p *= 1 - rate * wd
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        p -= rate * (m / (1 - 0.9 ** (k + 1))) / (math.sqrt(v / (1 - 0.999 ** (k + 1))) + 1e-8)
    ((model, _),) = built
    assert model.shift.item() == pytest.approx(p, rel=1e-5) and abs(p - 0.7) > 0.3
