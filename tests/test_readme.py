"""The README's quickstart runs as written."""

import ast
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_quickstart_runs(capsys):
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python block"
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    assert namespace["y"].shape == (8, 1000, 64) and namespace["y3"].shape == (2, 10, 64)
    assert namespace["ss"].nstates == 64 and namespace["ss"].nsystems == 64
    tokens = namespace["tokens"]  # the generation line: 8 prompt tokens + 16 new ones, ids in the vocabulary
    assert tokens.shape == (2, 24) and tokens.dtype == namespace["torch"].int64 and 0 <= int(tokens.min())
    assert int(tokens.max()) < 100
    assert "(64, 64) True" in capsys.readouterr().out


def test_first_lines_are_the_two_commands():
    first = README.read_text().splitlines()[:2]
    assert "make demo" in first[0] and "make test" in first[1]


def _block(marker: str) -> str:
    """The README's python block that contains ``marker``, dedented (the blocks inside a list are indented)."""
    import textwrap

    blocks = [textwrap.dedent(b) for b in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
              if marker in b]
    assert len(blocks) == 1, f"expected one python block with {marker!r}; found {len(blocks)}"
    return blocks[0]


def test_the_control_view_of_a_deep_wiener_model_runs_as_written():
    """The NonlinearSystem block, on a one-input DeepWiener (the block's ``model``)."""
    import numpy as np
    import pytest
    import torch

    control = pytest.importorskip("control")
    from ssmkit.sysid import DeepWiener

    torch.manual_seed(0)
    namespace = {"np": np, "model": DeepWiener(1, 1, d_model=3, n_layers=2, layer="s4d", layer_options={"d_state": 2},
                                               dt=0.5, timescale=(1.0, 3.0))}
    exec(compile(_block("NonlinearSystem(model)"), str(README), "exec"), namespace)
    plant, local = namespace["plant"], namespace["local"]
    assert (plant.n_inputs, plant.n_outputs, plant.n_states, plant.dt) == (1, 1, 12, 0.5)  # 2 blocks x 3 x 2 complex
    assert namespace["x_eq"].shape == (21, 12) and local.A.shape == (21, 12, 12) and local.dt == 0.5
    assert namespace["y_static"].shape == (21, 1)
    np.testing.assert_allclose(namespace["y_static"], namespace["y_eq"], rtol=0, atol=1e-12)  # the same 21 points
    assert isinstance(namespace["nl"], control.NonlinearIOSystem) and namespace["nl"].nstates == 12


def test_the_system_identification_example_runs_as_written(capsys):
    """The sysid block on the Cascaded Tanks files in ../shared/data, with the recipe cut to two steps a run (the
    block's names, arguments and result keys are what is checked; the full recipe takes minutes)."""
    import pytest

    data = README.parents[1] / "shared" / "data" / "cascaded_tanks"
    if not data.is_dir():
        pytest.skip("../shared/data is not present")
    code = _block("load_benchmark")
    assert '"DATA/cascaded_tanks"' in code and "recipe_for(bench.name)" in code
    code = code.replace('"DATA/cascaded_tanks"', repr(str(data))).replace(
        "recipe_for(bench.name)", "dataclasses.replace(recipe_for(bench.name), steps=2, val_every=1, d_model=4)")
    exec(compile("import dataclasses\n" + code, str(README), "exec"), {})
    rmse = ast.literal_eval(capsys.readouterr().out.strip().splitlines()[-1])  # one RMSE per output channel
    assert len(rmse) == 1 and 0 < rmse[0] < 100  # volts: a finite score of the two-step model on the test record


def test_writing_your_own_layer_runs_as_written():
    """The "Writing your own layer" block, in a fresh interpreter (it registers ``my_ema``, which must not stay
    registered in this process: tests iterate the registry): the printed results are the checker's, and the layer it
    defines agrees with a float64 loop of its equation."""
    import subprocess
    import sys

    block = _block('@register("my_ema")')
    check = block + '''
x = torch.randn(2, 7, 4, dtype=torch.float64)
layer = layer.double()
y, h = layer(x)
a = torch.sigmoid(layer.logit_a.detach())
state = torch.zeros(2, 4, dtype=torch.float64)
for t in range(7):
    state = a * state + (1 - a) * x[:, t]
    assert torch.allclose(y[:, t], state + layer.d.detach() * x[:, t], rtol=1e-14, atol=1e-14)
assert torch.allclose(h, state, rtol=1e-14, atol=1e-14)
print("loop ok", sorted(report))
'''
    root = README.parent
    run = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=root, timeout=300,
                         env={**__import__("os").environ, "PYTHONPATH": str(root / "src")})
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout.splitlines()
    assert out[0] == "passed: max relative error 0 (tolerance 1e-10)"
    assert out[1].startswith("skipped: ") and "does not" in out[1]  # the layer's own "unsupported" reason
    from ssmkit.layers.conformance import CHECKS

    assert out[2] == f"loop ok {sorted(CHECKS)}"


def test_the_official_checkpoint_block_runs_as_written(tmp_path):
    """The official-checkpoint block on a small random Mamba LM saved in the official layout (the block's names and
    arguments are what is checked; tests/models/test_official_reference.py checks the numbers): the model it loads
    gives the saved model's logits, and the folder it writes back loads to the same model."""
    import torch

    import ssmkit

    code = _block("load_mamba")
    assert '"path/to/mamba-130m"' in code and '"path/to/out"' in code
    torch.manual_seed(0)
    source = ssmkit.models.SequenceModel(d_input=1, d_model=8, n_layers=2, layer="mamba", d_output=24, head="lm",
                                         pool=None, vocab_size=24, norm="rms", final_norm="rms", activation=None,
                                         mixer_out=None, tie_embeddings=True)
    ssmkit.models.save_mamba(source, tmp_path / "in")
    assert "vocab_limit=50277" in code  # the tokenizer's ids of the real checkpoint; here 20 of the 24 rows
    code = code.replace('"path/to/mamba-130m"', repr(str(tmp_path / "in"))).replace(
        '"path/to/out"', repr(str(tmp_path / "out"))).replace("vocab_limit=50277", "vocab_limit=20")
    ids = torch.randint(0, 24, (2, 6))
    namespace = {"ids": ids}
    exec(compile(code, str(README), "exec"), namespace)
    with torch.no_grad():
        want, _ = source(ids)
    assert torch.allclose(namespace["logits"], want, rtol=0, atol=1e-6)
    assert namespace["tokens"].shape == (2, 26) and int(namespace["tokens"][:, 6:].max()) < 20
    again, _ = ssmkit.models.load_mamba(tmp_path / "out")(ids)
    assert torch.equal(again, namespace["logits"])
