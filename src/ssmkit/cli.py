"""The ``ssmkit`` command: training (``train``, ``compare``, ``configs``), ``bench SUITE`` (performance suites),
``demo`` (end-to-end run), ``tasks`` (the tasks and whether their data is present), ``data get|extract`` (data
sets), ``analyze`` and ``zoo`` (control analysis) and ``sysid``
(system identification on a benchmark).

    ssmkit --help                # the commands
    ssmkit train --help          # one model on one task (jsonargparse: every Experiment field is an option)
    ssmkit compare --help        # several models, one budget, a table and a plot
    ssmkit bench --help          # the suites
    ssmkit bench step --help     # one suite's options
    ssmkit analyze --help        # a checkpoint's poles, H-infinity norms, Bode plots
    ssmkit zoo --help            # the control-theoretic table of the layers
    ssmkit demo --help           # the demo's options
    ssmkit tasks                 # every task and whether its data is present
    ssmkit data get mnist        # fetch MNIST and verify its SHA-256 values
    ssmkit sysid --help          # identify a sysid benchmark (deep Wiener model), report and figures
    ssmkit --import mylayers train --task adding --model my_ema   # a layer of your own: its module imported first

``--import MODULE`` (before the command; repeatable) imports a module of the user's -- a module name, found from the
current folder too, or the path of a ``.py`` file -- so that the layers it registers (``@ssmkit.layers.register``)
can be named on the command line, in a config and in a run's ``model.json`` (``train``, ``compare``, ``analyze`` of
its checkpoints, ``zoo``).

Each command parses its own options (``--help`` included), so this parser only picks the command; its
module is imported when the command runs. Exit status: the command's own, 0 for ``--help``, and 2 with a
usage line for an unknown command or option (argparse's convention), or with one ``ssmkit: error:`` line for a missing
file or an invalid value (:func:`console`; ``SSMKIT_TRACEBACK=1`` shows the traceback).

Every command first makes the C library keep freed memory for reuse (:func:`ssmkit.memory.keep_freed_memory`: large
CPU tensors then skip the kernel's page zeroing: a Mamba block's training step 26 % faster here, its peak memory
30 % higher);
``SSMKIT_KEEP_FREED_MEMORY=0`` in the environment turns that off.
"""

from __future__ import annotations

import argparse
import os
import sys

from ssmkit.bench import add_suite_parsers
from ssmkit.data.commands import add_parsers as add_data_parsers


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: one sub-command per command; options after the command are passed on to it."""
    parser = argparse.ArgumentParser(
        prog="ssmkit",
        description="Deep structured state-space models for PyTorch: training, comparisons, benchmarks and the demo.",
        epilog="Run 'ssmkit COMMAND --help' for a command's options.",
    )
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (a module name, or the path of a .py file; repeatable): the layers "
                             "it registers can then be named, e.g. 'ssmkit --import mylayers train --model my_ema ...'")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, title="commands")
    commands.add_parser("train", help="train one model on one task", add_help=False)
    commands.add_parser("compare", help="train several models with the same budget: table, results files, plot",
                        add_help=False)
    commands.add_parser("configs", help="list the experiment configs shipped in the package", add_help=False)
    bench = commands.add_parser(
        "bench",
        help="run a performance suite",
        description="Run a performance suite; 'ssmkit bench SUITE --help' lists its options.",
    )
    add_suite_parsers(bench)
    commands.add_parser("analyze", help="control analysis of a checkpoint's LTI layers: poles, H-infinity, Bode plots",
                        add_help=False)
    commands.add_parser("zoo", help="the control-theoretic table of the registered layers", add_help=False)
    commands.add_parser("demo", help="train a small S4D model on the adding problem, then run it step by step",
                        add_help=False)
    add_data_parsers(commands)
    commands.add_parser("sysid", help="identify a system-identification benchmark with a deep Wiener model: report, "
                        "table next to published results, figures", add_help=False)
    return parser


def import_user_module(spec: str) -> None:
    """Import a user's module so that the layers it registers are known by name (``ssmkit --import``).

    Args:
        spec: a module name (``mylayers``, ``lab.layers``), looked up from the current folder too, as ``python -m``
            does; or the path of a ``.py`` file, imported under its stem.

    Raises:
        ValueError: no such module or file (the error the module itself raises while importing propagates).
    """
    import importlib
    import importlib.util

    if spec.endswith(".py") or os.sep in spec or (os.altsep and os.altsep in spec):
        path = os.path.abspath(spec)
        if not os.path.isfile(path):
            raise ValueError(f"--import {spec!r}: no such file (give a module name, or the path of a .py file)")
        name = os.path.splitext(os.path.basename(path))[0]
        found = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(found)
        sys.modules[name] = module  # as an import would: pickles and dataclasses of the module find it
        try:
            found.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return
    if os.getcwd() not in sys.path and "" not in sys.path:  # the ssmkit script's sys.path starts at its own folder
        sys.path.insert(0, os.getcwd())
    try:
        importlib.import_module(spec)
    except ModuleNotFoundError as missing:
        if missing.name is None or not spec.startswith(missing.name):
            raise  # the module was found: one it imports is missing
        raise ValueError(f"--import {spec!r}: no module named {missing.name!r} from {os.getcwd()} or sys.path (run "
                         "from the folder that holds it, or give the path of its .py file)") from None


def _dispatch(argv: list[str]) -> int:
    args, rest = build_parser().parse_known_args(argv)
    for spec in args.imports:
        import_user_module(spec)
    if args.command == "bench":
        from ssmkit.bench import run as run_suite

        return run_suite(args.suite, rest, prog=f"ssmkit bench {args.suite}")
    if args.command in ("train", "compare", "configs"):
        from ssmkit.train import commands

        entry = {"train": commands.train_main, "compare": commands.compare_main, "configs": commands.configs_main}
        return entry[args.command](rest, prog=f"ssmkit {args.command}")
    if args.command in ("analyze", "zoo"):
        from ssmkit.analysis import commands as analysis_commands

        entry = {"analyze": analysis_commands.analyze_main, "zoo": analysis_commands.zoo_main}
        return entry[args.command](rest, prog=f"ssmkit {args.command}")
    if args.command in ("tasks", "data"):
        from ssmkit.data.commands import run as run_data

        if rest:
            build_parser().parse_args(argv)  # exits 2 naming the unrecognised arguments
        return run_data(args)
    if args.command == "sysid":
        from ssmkit.sysid.commands import sysid_main

        return sysid_main(rest, prog="ssmkit sysid")
    from ssmkit.demo import main as demo_main

    return demo_main(rest, prog="ssmkit demo")


def main(argv: list[str] | None = None) -> int:
    """Run the command in ``argv`` (default: the process arguments) and return its exit status."""
    from ssmkit.memory import keep_freed_memory_from_env

    try:
        keep_freed_memory_from_env()  # large CPU tensors reuse freed pages (ssmkit.memory; SSMKIT_KEEP_FREED_MEMORY=0: off)
    except ValueError as bad:  # a malformed SSMKIT_KEEP_FREED_MEMORY: a usage error, as argparse reports its own
        print(f"ssmkit: error: {bad}", file=sys.stderr)
        return 2
    try:
        return _dispatch(sys.argv[1:] if argv is None else argv)
    except SystemExit as stop:  # argparse exits on --help (0) and on usage errors (2)
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)


def console() -> int:
    """The ``ssmkit`` command as a process runs it: :func:`main`, with a user error -- a missing data file or folder,
    an option value out of range (``FileNotFoundError``, ``ValueError``, each naming what was expected) -- reported
    in one line, ``ssmkit: error: ...``, with exit status 2 instead of a traceback. ``SSMKIT_TRACEBACK=1`` in the
    environment shows the traceback. (:func:`main`, called from Python, raises them.)"""
    try:
        return main()
    except (FileNotFoundError, ValueError) as bad:
        if os.environ.get("SSMKIT_TRACEBACK", "0") == "1":
            raise
        print(f"ssmkit: error: {bad}\n(set SSMKIT_TRACEBACK=1 for where it was raised)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(console())
