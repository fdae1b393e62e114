"""The fresh-interpreter helper of the tests (tests/interpreters.py): a hung child fails the test with its stack."""

import pytest

from tests.interpreters import InterpreterHung, run_python

BLOCKS = "import os\nr, w = os.pipe()\ndef wait_for_a_byte():\n    os.read(r, 1)\nwait_for_a_byte()\n"  # never written


def test_a_finished_child_is_returned_with_its_output_and_status():
    done = run_python(["-c", "import sys; print('out'); sys.exit(3)"], timeout=60)
    assert (done.returncode, done.stdout) == (3, "out\n")


def test_a_hung_child_fails_with_the_stack_where_it_hung():
    with pytest.raises(InterpreterHung, match="wait_for_a_byte"):
        run_python(["-c", BLOCKS], timeout=2)


def test_a_hung_child_is_retried_and_each_hang_reported():
    with pytest.warns(RuntimeWarning, match="(?s)retrying a hung interpreter.*wait_for_a_byte"):
        with pytest.raises(InterpreterHung):
            run_python(["-c", BLOCKS], timeout=2, attempts=2)
    with pytest.raises(ValueError, match="attempts must be at least 1"):
        run_python(["-c", "pass"], attempts=0)
