"""Every suite of ``ssmkit bench`` refuses a size or count below 1 with argparse's one-line usage error, before it
starts (``--d-model -4`` was a traceback from deep inside, ``--repeats 0`` "no median for empty data")."""

from __future__ import annotations

import pytest

from ssmkit.bench import SUITES, run

SIZES = {"core": "--d-model", "step": "--d-model", "generate": "--d-model", "ssd": "--heads", "selective": "--d-model", "gpu": "--copy-bytes",
         "cases": "--d-model", "contention": "--d-model", "crossover": "--d-model", "irregular": "--d-model"}


@pytest.mark.parametrize("value", ["0", "-4", "two"])
@pytest.mark.parametrize("suite", list(SUITES))
def test_sizes_and_counts_below_one_are_a_usage_error(suite, value, capsys):
    for option in ("--repeats", SIZES[suite]):
        with pytest.raises(SystemExit) as exit_:
            run(suite, [option, value], prog=f"ssmkit bench {suite}")
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"ssmkit bench {suite}: error: argument {option}") and "must be an int >= 1" in err, err
