"""Examples probe of 2026-12-05: the code a user copies from the documentation runs, and does what the text around it
says. The examples are extracted, not copied: every ```python block of README.md and docs/*.md, and every indented
block of a module docstring under src/ssmkit that parses as Python and calls something (the usage lines of the
package and module docstrings). ``test_every_example_is_covered`` fails when a new one appears without a check here.
Each example runs as written except for the placeholders it leaves to the reader (``model``, ``x``, ``bench``, a
folder) and its sizes, cut where the written ones take long (each replacement below is asserted to find its text, so
a changed example fails instead of silently running something else):

- ``train`` / ``train.run``: ``TrainConfig(max_steps=2000)`` -> 4 steps (warm-up 1, validation and checkpoint every 2,
  batch 8); ``sysid.fit``: ``steps=3000`` -> 3; ``data.task``: MQAR's ``n_train=1000`` -> 200; ``sysid.surrogates``:
  the Duffing surrogate at 1 024 samples a period, 2 records and a 2 048-sample arrow (12 s at its defaults);
  ``sysid.workflow``: the recipe cut to 2 steps at width 4 (README's sysid block is run so by tests/test_readme.py).
- The README quickstart (run by tests/test_readme.py) is run again here for the claims that test leaves out: the
  printed kernel shape and ``supports("step")``, ``y = K ⊛ u`` with the skip in tap 0, and the classifier's logits.

Checked and right: layers.available() is the sorted list the comment shows; the protocol synopsis (design.md and
layers/protocol.py) for every registered layer at tiny widths: shapes, zero initial state, ``return_state=False``
giving None, ``step``'s (B, H); ``interleave``'s result; the config's YAML round trip; the MQAR task (absent until
generated, (L,) int64 pairs); ``analyze_model`` (one result per LTI layer, ρ < 1, finite H∞); the zoo (one row per
layer, measured statistics per layer); the operating sweeps (u_i over μ_i ± 2σ_i, the other inputs at their
means, ρ < 1); ``write_report``'s seven files as its docstring names them; the ONNX step graph (numpy-zero states,
equal to ``step``) and sequence graph (equal to ``forward``); ``WeightAverage`` (its ``module`` holds the plain mean of
the first iterates); ``load_benchmark`` (shapes, init window, unit; a missing folder's one-line FileNotFoundError);
``fit_simulation``; ``subspace_poles`` and ``init_from_data`` (written into layers[0], then layers[0:4]); each
nlbench loader's error names the file its comment names; the recipe; the surrogates' sampling rates and seeding;
``identify``/``evaluate``; ``fit``'s run folder and result keys as train/run.py lists them.

Findings (fixed):

1. *The layer protocol synopsis used ``h0`` before defining it* (docs/design.md's API block and the
   layers/protocol.py docstring: ``layer(x, state=h0)`` on the line above ``h0 = layer.initial_state(batch_size)``),
   so the block copied top to bottom stopped on a NameError. The ``initial_state`` line now comes first.
2. *``ssmkit.data.available_tasks()``'s comment promised names after "smnist"* (``["adding", "copying", ...,
   "smnist", ...]``); the sorted list ends there. Now ``[..., "sfashion", "smnist"]``, checked against the list.

Noticed, left alone: data/task.py's example calls ``ssmkit.data.…``, which needs ``import ssmkit.data`` (only
``ssmkit.analysis`` loads on attribute access); the docstring is that package's own, so the import is implied.

Skipped: nothing that runs on the CPU; the README's ``torch.export`` and ``ssmkit.memory.keep_freed_memory()`` lines
are prose, not examples (the second changes the allocator of the whole test process; tests/test_memory.py covers
it). The benchmark-file examples skip without ../shared/data; the ONNX ones without onnx/onnxruntime.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import io
import pathlib
import re
import textwrap
import tokenize

import numpy as np
import pytest
import torch

import ssmkit
import ssmkit.layers as layers

ROOT = pathlib.Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "ssmkit"
DATA = ROOT.parent / "shared" / "data"


# ---------------------------------------------------------------------------------------------------- extraction


def _indented_blocks(doc: str) -> list[str]:
    out, cur = [], []
    for line in doc.splitlines() + [""]:
        if line.startswith("    ") and line.strip():
            cur.append(line)
        else:
            if cur:
                out.append(textwrap.dedent("\n".join(cur)))
            cur = []
    return out


def _is_example(block: str) -> bool:
    try:
        tree = ast.parse(block)
    except SyntaxError:
        return False
    return any(isinstance(n, ast.Call) for n in ast.walk(tree))


def docstring_examples() -> dict[str, str]:
    """Module name -> its docstring's example block(s), joined."""
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        blocks = [b for b in _indented_blocks(doc) if _is_example(b)]
        if blocks:
            parts = path.relative_to(SRC).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = "\n".join(blocks)
    return found


def markdown_blocks() -> dict[str, list[str]]:
    return {p.name: re.findall(r"```python\n(.*?)```", p.read_text(), flags=re.S)
            for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}


EXAMPLES = docstring_examples()


def _replaced(code: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert old in code, f"the example no longer contains {old!r}: update this probe"
        code = code.replace(old, new)
    return code


def run(code: str, ns: dict) -> tuple[dict, dict[int, object], dict[int, str]]:
    """Execute ``code`` statement by statement in ``ns``; return ns, the value of each expression statement by line
    and the comment of each line."""
    tree = ast.parse(code)
    values = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Expr):
            values[stmt.lineno] = eval(compile(ast.Expression(stmt.value), "<example>", "eval"), ns)
        else:
            exec(compile(ast.Module([stmt], []), "<example>", "exec"), ns)
    comments = {tok.start[0]: tok.string.lstrip("# ").strip()
                for tok in tokenize.generate_tokens(io.StringIO(code).readline) if tok.type == tokenize.COMMENT}
    return ns, values, comments


def matches_listing(value: list, listing: list) -> bool:
    """``value`` fits ``listing``, where each ``...`` stands for one or more items."""
    if not listing:
        return not value
    if listing[0] is Ellipsis:
        return any(matches_listing(value[k:], listing[1:]) for k in range(1, len(value) + 1))
    return bool(value) and value[0] == listing[0] and matches_listing(value[1:], listing[1:])


def test_matches_listing():
    assert matches_listing(["a", "b", "c", "d"], ["a", ..., "d"])
    assert not matches_listing(["a", "b"], ["a", "b", ...])  # "..." at the end promises more
    assert not matches_listing(["a", "d"], ["a", ..., "d"])


def _check_listings(values, comments):
    """Every expression statement whose comment shows a list literal (with ``...`` for runs of items) gives that."""
    checked = 0
    for line, value in values.items():
        comment = comments.get(line, "")
        if comment.startswith("["):
            listing = ast.literal_eval(comment[: comment.index("]") + 1])
            assert matches_listing(list(value), listing), (value, comment)
            checked += 1
    return checked


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SSMKIT_DATA", str(tmp_path / "data"))
    return tmp_path


def _wiener(n_inputs=1, n_layers=2, dt=0.5):
    from ssmkit.sysid import DeepWiener

    torch.manual_seed(0)
    return DeepWiener(n_inputs, 1, d_model=3, n_layers=n_layers, layer="s4d", layer_options={"d_state": 4}, dt=dt,
                      timescale=(1.0, 3.0))


# ---------------------------------------------------------------------------------------------------- coverage

COVERED = {
    "analysis.layerwise", "analysis.onnx_export", "analysis.onnx_pair", "analysis.onnx_sequence", "analysis.operating",
    "analysis.report",
    "analysis.zoo", "data.task", "layers", "layers.protocol", "models.config", "models.official", "models.pattern", "sysid.averaging",
    "sysid.benchmarks", "sysid.fit", "sysid.init", "sysid.nlbench", "sysid.recipes", "sysid.surrogates",
    "sysid.workflow", "train", "train.run", "train.transfer",
}
NOT_CODE = {"models.block"}  # "prenorm:   y = x + Dropout(...)": equations that happen to parse as annotations


def test_every_example_is_covered():
    assert set(EXAMPLES) == COVERED | NOT_CODE
    counts = {name: len(blocks) for name, blocks in markdown_blocks().items()}
    # README's eight blocks run in tests/test_readme.py (the first again below; "Writing your own layer" in a
    # subprocess: it registers a layer), "Your own data" in tests/probes/test_probe_sysid_own_data_2026_12_05.py,
    # "Your own sequence data" in tests/probes/test_probe_ml_own_data_2026_12_05.py, "Closing the loop" in
    # tests/probes/test_probe_closed_loop_2026_12_05.py; design.md's one below
    assert counts == {"README.md": 8, "benchmarks.md": 0, "design.md": 1, "results.md": 0}


# ---------------------------------------------------------------------------------------------------- markdown


def test_readme_quickstart_claims_beyond_test_readme(capsys):
    block = markdown_blocks()["README.md"][0]
    ns, values, _ = run(block, {})
    out = capsys.readouterr().out.splitlines()
    assert out == ["(64, 64) True", "torch.Size([64, 1000]) True"]
    layer, x = ns["layer"], ns["x"]
    with torch.no_grad():
        y, _ = layer(x[:2], return_state=False)
        kernel = layer.kernel(1000)  # "y = K ⊛ u exactly (the skip is K's tap 0)"
        u = x[:2].double().transpose(1, 2)
        conv = torch.nn.functional.conv1d(torch.nn.functional.pad(u, (999, 0)), kernel.double().flip(-1)[:, None],
                                          groups=64)
    assert (conv.transpose(1, 2) - y.double()).abs().max() < 1e-4 * y.abs().max()
    assert ns["logits"].shape == (8, 10) and ns["_"] is None  # return_state=False: no states


def test_design_api_block_runs_top_to_bottom():
    """Only the inputs are placeholders (before: ``h0`` was used on the line above its definition)."""
    block = markdown_blocks()["design.md"][0]
    ns, values, _ = run(block, {"ssmkit": ssmkit, "x": torch.randn(2, 9, 64), "x_t": torch.randn(2, 64),
                                "batch_size": 2})
    assert ns["y"].shape == (2, 9, 64) and ns["_"] is None and ns["y_t"].shape == (2, 64)
    assert values[2] == layers.available() and values[8] is True


# ---------------------------------------------------------------------------------------------------- layers, models


def test_layers_package_example():
    ns, values, comments = run(EXAMPLES["layers"], {"ssmkit": ssmkit})
    assert _check_listings(values, comments) == 1
    assert values[1] == sorted(values[1])  # "sorted names"
    assert type(ns["layer"]).__name__ == "S4D" and ns["layer"].d_model == 64


@pytest.mark.parametrize("name", layers.available())
def test_protocol_synopsis_for_every_layer(name):
    from tests.conftest import NEEDED_AT_TINY_WIDTH

    torch.manual_seed(0)
    layer = layers.build(name, d_model=4, **NEEDED_AT_TINY_WIDTH.get(name, {}))
    ns, _, _ = run(EXAMPLES["layers.protocol"], {"layer": layer, "x": torch.randn(2, 6, 4),
                                                 "x_t": torch.randn(2, 4), "batch_size": 2})
    assert ns["y"].shape == (2, 6, 4) and ns["y_t"].shape == (2, 4) and ns["_"] is None
    tensors = _tensors(ns["h0"])
    assert tensors and all(not t.any() for t in tensors)  # zeros (an empty cache for attention and Mega)


def _tensors(state) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state]
    if dataclasses.is_dataclass(state):
        state = [getattr(state, f.name) for f in dataclasses.fields(state)]
    if isinstance(state, (list, tuple)):
        return [t for s in state for t in _tensors(s)]
    return []


def test_models_config_example(in_tmp):
    from ssmkit.models import SequenceModel, SequenceModelConfig

    ns, values, _ = run(EXAMPLES["models.config"], {"SequenceModelConfig": SequenceModelConfig,
                                                    "SequenceModel": SequenceModel})
    assert values == {3: True} and (in_tmp / "runs/x/model.yaml").is_file()
    assert ns["model"](torch.randn(1, 5, 2), return_state=False)[0].shape == (1, 10)


def test_models_pattern_example():
    from ssmkit.models import interleave

    _, values, comments = run(EXAMPLES["models.pattern"], {"interleave": interleave})
    assert values[1] == eval(comments[1])


# ---------------------------------------------------------------------------------------------------- data, train


def test_data_task_example(in_tmp):
    import ssmkit.data

    code = _replaced(EXAMPLES["data.task"], {"n_train=1000": "n_train=200"})
    ns, values, comments = run(code, {"ssmkit": ssmkit})
    assert _check_listings(values, comments) == 1
    assert values[3].length == 64 and values[3].target == "tokens"
    assert values[4] is False and ns["task"].present()  # "False until generated"
    assert set(ns["splits"]) == {"train", "val", "test"}
    assert ns["x"].shape == ns["y"].shape == (64,) and ns["x"].dtype == torch.int64 == ns["y"].dtype


def _fit_namespace():
    from ssmkit.models import SequenceModelConfig

    g = torch.Generator().manual_seed(0)

    def split(n):
        return torch.randn(n, 12, 2, generator=g), torch.randint(0, 3, (n,), generator=g)

    inputs, targets = split(16)
    return {"model_config": SequenceModelConfig(d_input=2, d_model=4, n_layers=1, layer="s4d", d_output=3,
                                                layer_options={"d_state": 4}),
            "inputs": inputs, "targets": targets, "val_split": split(8), "test_split": split(8)}


SHORT = "TrainConfig(max_steps=4, warmup_steps=1, val_every=2, checkpoint_every=2, batch_size=8)"


@pytest.mark.parametrize("module,out", [("train", "runs/a"), ("train.run", "runs/listops-s4d")])
def test_train_fit_examples(module, out, in_tmp):
    from ssmkit.train import TrainConfig, fit

    code = _replaced(EXAMPLES[module], {"TrainConfig(max_steps=2000)": SHORT})
    code = code.replace("test=test_split,", "test=test_split, progress=False,")
    ns, _, _ = run(code, {"TrainConfig": TrainConfig, "fit": fit, **_fit_namespace()})
    run_dir = in_tmp / out
    # the folder as train/run.py's docstring lists it
    for name in ("checkpoints/last.ckpt", "checkpoints/step4.ckpt", "checkpoints/best_val.ckpt",
                 "logs/version_0/metrics.csv", "model.json", "train.json", "result.json"):
        assert (run_dir / name).is_file(), name
    if "result" in ns:
        result = ns["result"]
        assert {"test_accuracy", "test_accuracy_final", "test_accuracy_best_val", "best_val_step"} <= set(result)


# ---------------------------------------------------------------------------------------------------- analysis


def _mixed_model():
    from ssmkit.models import SequenceModel

    torch.manual_seed(0)
    return SequenceModel(d_input=2, d_model=4, n_layers=3, layer=["s4d", "mamba", "s5"],
                         layer_options={"s4d": {"d_state": 4}, "s5": {"d_state": 16}}, d_output=2)


def test_layerwise_example(capsys):
    ns, _, _ = run(EXAMPLES["analysis.layerwise"], {"ssmkit": ssmkit, "model": _mixed_model()})
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["blocks.0.layer", "blocks.2.layer"]  # the LTI layers only
    assert all(0 < float(line.split()[1]) < 1 and np.isfinite(float(line.split()[2])) for line in lines)


def test_zoo_example(capsys):
    from ssmkit.analysis.zoo import pole_statistics, to_csv, to_markdown, zoo_table

    ns, _, _ = run(EXAMPLES["analysis.zoo"], {"zoo_table": zoo_table, "to_markdown": to_markdown, "to_csv": to_csv,
                                              "pole_statistics": pole_statistics, "model": _mixed_model()})
    assert [r["layer"] if isinstance(r, dict) else r.layer for r in ns["rows"]] == layers.available()
    table = capsys.readouterr().out
    assert all(f"| {name} |" in table for name in layers.available())
    stats = ns["stats"]  # "per layer": the time-varying one with its reason and no numbers
    assert [s["layer"] for s in stats] == ["s4d", "mamba", "s5"]
    assert stats[1]["spectral_radius"] is None and "selective" in stats[1]["note"]
    assert 0 < stats[0]["spectral_radius"] < 1 and 0 < stats[2]["spectral_radius"] < 1


def test_operating_sweeps_example():
    model = _wiener(n_inputs=2)
    model.u_mean.copy_(torch.tensor([1.0, -3.0]))
    model.u_std.copy_(torch.tensor([0.5, 2.0]))
    ns, values, _ = run(EXAMPLES["analysis.operating"], {"ssmkit": ssmkit, "model": model})
    u, y = values[2]
    sweeps = ns["sweeps"]
    assert len(sweeps) == 2 and u.shape == y.shape == (21,)
    np.testing.assert_allclose([u.min(), u.max()], [0.0, 2.0])  # μ_0 ± 2σ_0
    np.testing.assert_allclose(sweeps[0].u[:, 1], -3.0)  # the other input at its mean
    np.testing.assert_allclose([sweeps[1].u[:, 1].min(), sweeps[1].u[:, 1].max()], [-7.0, 1.0])
    assert values[3].shape == (21,) and (values[3] < 1).all()  # Schur-stable blocks: stable at every point


def test_report_example_writes_the_files_it_names(in_tmp):
    ns, _, _ = run(EXAMPLES["analysis.report"], {"ssmkit": ssmkit, "model": _wiener()})
    named = set(re.findall(r"``(\w+\.(?:md|json|png))``", importlib.import_module("ssmkit.analysis.report").__doc__))
    assert len(named) == 7
    written = {p.name for p in (in_tmp / "runs/x/analysis").iterdir()}
    assert written == named and {pathlib.Path(p).name for p in ns["paths"].values()} == named


def test_onnx_step_example(in_tmp):
    pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    model = _wiener(n_inputs=2)
    u_t = np.random.default_rng(0).standard_normal((4, 2)).astype(np.float32)
    code = EXAMPLES["analysis.onnx_export"]
    ns = {"ssmkit": ssmkit, "onnxruntime": onnxruntime, "model": model, "u_t": u_t}
    state_line = "state = info.initial_state(batch_size=4)"
    jitter_line = 'info = ssmkit.analysis.export_onnx(model, "jitter.onnx", intervals=True)'
    regular, jitter = code.split(jitter_line)
    head, tail = regular.split(state_line)
    run(head + state_line, ns)
    assert all(isinstance(s, np.ndarray) and not s.any() for s in ns["state"])  # numpy zeros, one per part
    run(tail, ns)
    with torch.no_grad():
        y, _ = model.step(torch.from_numpy(u_t), model.initial_state(4))
    np.testing.assert_allclose(ns["y"], y.numpy(), rtol=0, atol=1e-5)
    # the irregular example: each row's own gap since its previous sample (added 2026-12-06)
    ns.update(dt_since_last=np.array([0.05, 0.1, 0.4, 2.5], dtype=np.float32), Ts=np.float32(0.1))
    run(jitter_line + jitter, ns)
    with torch.no_grad():
        y_gaps, _ = model.step(torch.from_numpy(u_t), model.initial_state(4),
                               interval=torch.tensor([0.5, 1.0, 4.0, 25.0]))
    np.testing.assert_allclose(ns["y"], y_gaps.numpy(), rtol=0, atol=1e-5)
    assert not np.allclose(ns["y"][[0, 2, 3]], y.numpy()[[0, 2, 3]], atol=1e-3)  # the gaps matter (row 1: one period)


def test_onnx_sequence_example(in_tmp):
    pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    model = _wiener(n_inputs=2)
    u = np.random.default_rng(0).standard_normal((1, 37, 2)).astype(np.float32)
    # the second block's placeholders: a bidirectional classifier and a right-padded batch with its lengths
    from ssmkit.models import SequenceModel

    torch.manual_seed(0)
    classifier = SequenceModel(d_input=2, d_model=4, n_layers=1, layer="s4d",
                               layer_options={"d_state": 4, "bidirectional": True}, d_output=3, head="classify",
                               pool="mean").eval()
    u_padded = np.random.default_rng(1).standard_normal((2, 13, 2)).astype(np.float32)
    lengths = np.array([7, 13])
    ns, _, _ = run(EXAMPLES["analysis.onnx_sequence"], {"ssmkit": ssmkit, "onnxruntime": onnxruntime,
                                                        "model": model, "u": u, "classifier": classifier,
                                                        "u_padded": u_padded, "lengths": lengths})
    with torch.no_grad():
        y, _ = model(torch.from_numpy(u))
        alone = classifier(torch.from_numpy(u_padded[:1, :7]))[0]  # the short item by itself
        padded = classifier(torch.from_numpy(u_padded), lengths=torch.from_numpy(lengths))[0]
    np.testing.assert_allclose(ns["y"], y.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(ns["logits"], padded.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(ns["logits"][:1], alone.numpy(), rtol=0, atol=1e-5)


def test_onnx_pair_example(in_tmp):
    """The pair graph's example: each pair's logits are its two unpadded documents' (the model run with lengths, and
    the short document of pair 0 alone)."""
    pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    from ssmkit.models import SequenceModel

    torch.manual_seed(0)
    matcher = SequenceModel(d_input=2, d_model=4, n_layers=1, layer="s4d", layer_options={"d_state": 4},
                            d_output=2, head="classify", pool="mean", pair=True).eval()
    u_pairs = np.random.default_rng(2).standard_normal((2, 2, 9, 2)).astype(np.float32)
    lengths = np.array([[4, 9], [9, 6]])
    ns, _, _ = run(EXAMPLES["analysis.onnx_pair"], {"ssmkit": ssmkit, "onnxruntime": onnxruntime,
                                                   "matcher": matcher, "u_pairs": u_pairs, "lengths": lengths})
    with torch.no_grad():
        padded = matcher(torch.from_numpy(u_pairs), lengths=torch.from_numpy(lengths))[0]
        first = matcher.features(torch.from_numpy(u_pairs[:1, 0, :4]), return_state=False)[0]
        second = matcher.features(torch.from_numpy(u_pairs[:1, 1]), return_state=False)[0]
        alone = matcher.head(first, second)
    np.testing.assert_allclose(ns["logits"], padded.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(ns["logits"][:1], alone.numpy(), rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------------- sysid


def test_weight_average_example():
    from ssmkit.sysid.averaging import WeightAverage

    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    seen = []

    class Recorder:  # records each iterate after the optimizer's step
        def update(self, m):
            average.update(m)
            seen.append(m.weight.detach().clone())

    code = _replaced(EXAMPLES["sysid.averaging"], {"for step in ...:": "for step in range(3):",
                                                   "average.update(model)": "recorder.update(model)",
                                                   "average.module(...)": "average.module(x)"})
    ns = {"WeightAverage": WeightAverage, "model": model, "optimizer": optimizer, "recorder": Recorder(),
          "x": torch.ones(1, 2)}
    average = None

    def make(*args, **kwargs):
        nonlocal average
        average = WeightAverage(*args, **kwargs)
        return average

    ns["WeightAverage"] = make
    _, values, _ = run(code, ns)
    assert len(seen) == 3
    mean = torch.stack(seen).mean(0)  # the first 1/(1 - β) updates: the plain mean of the iterates
    torch.testing.assert_close(average.module.weight, mean, rtol=0, atol=1e-6)
    assert values[4].shape == (1, 1)


def _shared(name):
    if not (DATA / name).is_dir():
        pytest.skip("../shared/data is not present")
    return str(DATA / name)


def test_load_benchmark_example(tmp_path):
    from ssmkit.sysid.benchmarks import load_benchmark

    code = _replaced(EXAMPLES["sysid.benchmarks"], {'"path/to/cascaded_tanks"': repr(_shared("cascaded_tanks"))})
    _, values, _ = run(code, {"load_benchmark": load_benchmark})
    u, y, n_init, unit = values[2]
    assert u.shape == y.shape == (1024, 1) and (n_init, unit) == (50, "V")
    with pytest.raises(FileNotFoundError) as err:
        load_benchmark("cascaded_tanks", folder=tmp_path)
    assert "dataBenchmark.csv" in str(err.value) and "\n" not in str(err.value)


def test_fit_simulation_example():
    from ssmkit.sysid.fit import SimulationFit, fit_simulation
    from ssmkit.sysid.surrogates import tanks_surrogate

    code = _replaced(EXAMPLES["sysid.fit"], {"steps=3000": "steps=3"})
    ns, _, _ = run(code, {"fit_simulation": fit_simulation, "SimulationFit": SimulationFit,
                          "model": _wiener(dt=4.0), "bench": tanks_surrogate(seed=0)})
    history = ns["history"]
    assert history["steps"] == 3 and len(history["train_loss"]) == 3 and np.isfinite(history["train_loss"]).all()


def test_init_example():
    from ssmkit.sysid.init import init_from_data, subspace_poles
    from ssmkit.sysid.surrogates import tanks_surrogate

    model = _wiener(n_layers=4, dt=4.0)

    def modes(i):
        return model.layers[i].state_space().poles()

    before = [modes(i) for i in range(4)]
    code = EXAMPLES["sysid.init"]
    lines = code.splitlines()
    ns = {"subspace_poles": subspace_poles, "init_from_data": init_from_data, "model": model,
          "bench": tanks_surrogate(seed=0)}
    _, values, _ = run("\n".join(lines[:3]), ns)  # z, then the first init_from_data
    assert ns["z"].shape == (8,)
    written = values[2]

    def holds(i):
        return all(np.abs(modes(i) - w).min() < 1e-6 for w in written)

    assert holds(0) and not holds(1)  # written into model.layers[0]
    np.testing.assert_allclose(modes(1), before[1])
    _, values, _ = run("\n".join(lines[3:]), ns)
    written = values[1]
    assert all(holds(i) for i in range(4))  # ... into each of model.layers[0:4]


def test_nlbench_loaders_name_the_files_of_their_comments(tmp_path):
    from ssmkit.sysid import nlbench

    pairs = re.findall(r"(\w+)\((?:\"[^\"]*\"|\.\.\.)\)\s+#\s+([\w.]+)", EXAMPLES["sysid.nlbench"])
    assert [p[0] for p in pairs] == ["wiener_hammerstein", "silverbox", "emps", "ced", "parallel_wh"]
    for loader, file in pairs:
        with pytest.raises(FileNotFoundError) as err:
            getattr(nlbench, loader)(tmp_path)
        assert file in str(err.value) and "\n" not in str(err.value), (loader, str(err.value))


def test_recipe_example():
    from ssmkit.sysid.recipes import Recipe, recipe_for

    ns, _, comments = run(EXAMPLES["sysid.recipes"], {"recipe_for": recipe_for})
    assert isinstance(ns["recipe"], Recipe)
    assert "dataclasses.replace(recipe, steps=500)" in comments[1]
    assert dataclasses.replace(ns["recipe"], steps=500).steps == 500


def test_surrogates_example():
    from ssmkit.sysid import surrogates

    code = _replaced(EXAMPLES["sysid.surrogates"], {
        "duffing_surrogate(seed=0)": "duffing_surrogate(seed=0, n_period=1024, n_records=2, n_arrow=2048)"})
    ns = vars(surrogates).copy()
    rates = {}
    for line in code.splitlines():
        run(line, ns)
        comment = line.split("#", 1)[1]
        if m := re.search(r"Ts = ([\d.]+) s", comment):
            expected = 1 / float(m.group(1))
        else:
            m = re.search(r"([\d.]+) (k?)Hz", comment)
            expected = float(m.group(1)) * (1000 if m.group(2) else 1)
        rates[ns["bench"].name] = (1 / ns["bench"].train[0].dt, expected)
    assert len(rates) == 4
    for name, (got, expected) in rates.items():
        assert got == pytest.approx(expected, rel=1e-6), name
    a, b = surrogates.tanks_surrogate(seed=0), surrogates.tanks_surrogate(seed=0)  # "the same seed ..."
    assert torch.equal(a.train[0].y, b.train[0].y) and torch.equal(a.test[0].u, b.test[0].u)


def test_workflow_example():
    from ssmkit.sysid import load_benchmark
    from ssmkit.sysid.recipes import recipe_for
    from ssmkit.sysid.workflow import evaluate, identify

    folder = _shared("cascaded_tanks")
    code = _replaced(EXAMPLES["sysid.workflow"], {
        "recipe_for(bench.name)": "dataclasses.replace(recipe_for(bench.name), steps=2, val_every=1, d_model=4)"})
    ns, _, _ = run(code, {"load_benchmark": load_benchmark, "recipe_for": recipe_for, "identify": identify,
                          "evaluate": evaluate, "folder": folder, "dataclasses": dataclasses})
    records = ns["scores"]["records"]
    assert len(records) == len(ns["bench"].test) == 1
    assert len(records[0]["rmse"]) == 1 and 0 < records[0]["rmse"][0] < 100  # one value per output, in V
    assert {"rmse", "fit"} <= set(records[0])


def test_official_checkpoint_example(in_tmp):
    # models/official.py's lines on a small random Mamba LM saved in the official layout at the placeholder
    # "path/to/mamba-130m"; `ids` (the tokenizer's output in the example) is given
    import ssmkit

    torch.manual_seed(0)
    source = ssmkit.models.SequenceModel(d_input=1, d_model=8, n_layers=2, layer="mamba2",
                                         layer_options={"headdim": 4, "d_state": 4}, d_output=16, head="lm", pool=None,
                                         vocab_size=16, norm="rms", final_norm="rms", activation=None, mixer_out=None,
                                         head_bias=False)
    ssmkit.models.save_mamba(source, in_tmp / "path" / "to" / "mamba-130m")
    ids = torch.randint(0, 16, (2, 5))
    ns, _, _ = run(EXAMPLES["models.official"], {"ssmkit": ssmkit, "ids": ids})
    with torch.no_grad():
        want, _ = source(ids)
    assert torch.allclose(ns["logits"], want, rtol=0, atol=1e-6) and not ns["model"].training
    assert sorted(p.name for p in (in_tmp / "path" / "to" / "out").iterdir()) == ["config.json", "pytorch_model.bin"]


def test_transfer_example(in_tmp):
    # train/transfer.py's fine-tuning lines: a source run folder (placeholder "runs/pretrain", written here in
    # fit's checkpoint layout) with a 1-output head, loaded into a 3-class model (`config`, the placeholder)
    from ssmkit.models import SequenceModel, SequenceModelConfig
    from ssmkit.train import freeze_parameters, load_weights, param_groups

    common = dict(d_input=2, d_model=4, n_layers=2, layer="s4d", layer_options={"d_state": 4}, pool="mean")
    torch.manual_seed(0)
    source = SequenceModel(d_output=1, head="regress", **common)
    (in_tmp / "runs" / "pretrain" / "checkpoints").mkdir(parents=True)
    torch.save({"hyper_parameters": {"model": source.config.to_dict()},
                "state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}},
               in_tmp / "runs" / "pretrain" / "checkpoints" / "last.ckpt")
    config = SequenceModelConfig(d_output=3, head="classify", **common)
    ns, _, comments = run(EXAMPLES["train.transfer"], {"SequenceModel": SequenceModel, "config": config, "torch": torch,
                                                        "load_weights": load_weights, "param_groups": param_groups,
                                                        "freeze_parameters": freeze_parameters})
    model, report = ns["model"], ns["report"]
    summary = report.summary()
    assert summary.startswith(f"initialised from {'runs/pretrain/checkpoints/last.ckpt'}: loaded ")
    assert "the head differs, not loaded" in summary and "head differs, not loaded" in " ".join(comments.values())
    for name, value in source.state_dict().items():
        if not name.startswith("head."):
            assert torch.equal(model.state_dict()[name], value), name
    trainable = {id(p) for group in ns["optimizer"].param_groups for p in group["params"]}
    assert trainable == {id(model.head.weight), id(model.head.bias)}  # the backbone frozen, left out
