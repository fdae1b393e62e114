"""``ssmkit --import MODULE``: a layer of the user's own, registered in their module, trained from the command line.

Without it the shell command had no way to import the module (``ssmkit train --model my_ema`` answered "unknown
layer"); the layer trains the same as when built in-process. The user's module is written to a temporary folder.
"""

from __future__ import annotations

import json
import sys

import pytest

from ssmkit.cli import import_user_module
from ssmkit.cli import main as cli_main
from ssmkit.layers import available, unregister

LAYER = '''
from ssmkit.layers import register
from tests.probes.test_probe_layer_author_2026_12_07 import AuthorEMA


@register("{name}")
class UserEMA(AuthorEMA):
    """The README's layer (h_t = a h_(t-1) + (1 - a) x_t, y_t = h_t + d x_t), in the user's own module."""
'''

TINY = ["--task", "adding", "--task_options", "{length: 8, n_train: 16, n_val: 8, n_test: 8}", "--d_model", "4",
        "--n_layers", "1", "--train.batch_size", "8", "--train.max_steps", "2", "--train.warmup_steps", "0",
        "--train.val_every", "0", "--train.checkpoint_every", "0", "--no-progress"]


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    names = []
    yield tmp_path, names
    for name in names:
        if name in available():
            unregister(name)
    for module in ("cli_user_layers", "cli_user_file"):
        sys.modules.pop(module, None)


def test_a_module_by_name_from_the_current_folder_and_a_file_by_path(user_folder):
    pytest.importorskip("lightning")
    folder, names = user_folder
    names += ["cli_import_ema", "cli_import_file_ema"]
    (folder / "cli_user_layers.py").write_text(LAYER.format(name="cli_import_ema"))
    with pytest.raises(ValueError, match=r"unknown layer names \[.cli_import_ema.\].*ssmkit --import MODULE"):
        cli_main(["train", *TINY, "--model", "cli_import_ema", "--out", "runs/a"])
    assert cli_main(["--import", "cli_user_layers", "train", *TINY, "--model", "cli_import_ema", "--out",
                     "runs/a"]) == 0
    assert json.loads((folder / "runs" / "a" / "model.json").read_text())["layer"] == "cli_import_ema"
    assert json.loads((folder / "runs" / "a" / "result.json").read_text())["steps"] == 2
    sub = folder / "lib"
    sub.mkdir()
    (sub / "cli_user_file.py").write_text(LAYER.format(name="cli_import_file_ema"))
    assert cli_main(["--import", "lib/cli_user_file.py", "train", *TINY, "--model", "cli_import_file_ema", "--out",
                     "runs/b"]) == 0
    assert (folder / "runs" / "b" / "result.json").is_file()


def test_what_cannot_be_imported_is_named(user_folder):
    folder, _ = user_folder
    with pytest.raises(ValueError, match=r"--import 'no_such_layers_mod': no module named 'no_such_layers_mod'"):
        import_user_module("no_such_layers_mod")
    with pytest.raises(ValueError, match=r"--import 'missing/layers.py': no such file"):
        import_user_module("missing/layers.py")
    # the module exists, one it imports does not: that error, naming the missing one, is the user's to see
    (folder / "cli_user_layers.py").write_text("import not_installed_dependency_xyz\n")
    with pytest.raises(ModuleNotFoundError, match="not_installed_dependency_xyz"):
        import_user_module("cli_user_layers")
    (folder / "cli_user_file.py").write_text("raise RuntimeError('broken at import')\n")
    with pytest.raises(RuntimeError, match="broken at import"):
        import_user_module("cli_user_file.py")
    assert "cli_user_file" not in sys.modules  # a failed import leaves nothing half-registered behind
