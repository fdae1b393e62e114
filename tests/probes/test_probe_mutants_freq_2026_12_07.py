"""Mutation probe (2026-12-07, frequency round) of analysis/frequency, analysis/sampling, train/transfer and ops/opaque:
the mutants that the tests referencing each module (test_frequency and test_statespace; test_prewarp,
test_discretisation_conventions, test_continuous_export, test_continuous_reduction and the 2026-12-06/07 continuous
and mutant probes; test_transfer, the examples probe's transfer example, test_trainer's checkpoint test and the
2026-12-07 mutant probe; test_forward_ad_ops, test_compile_native and the sysid mutant probe's opaque tests) let
survive. Each test names the mutants it kills (ids of the round's table in the report) and checks the real code
against an independent reference: a closed form written out here, the eigenvalues written into A, a hand-built state
dict or module, numpy's conj, the order the docstring states."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch import nn

from ssmkit.analysis import StateSpace
from ssmkit.analysis.frequency import schur_form, schur_transfer
from ssmkit.ops.opaque import absent_if_zero, eager_views_and_autograd, exporting
from ssmkit.train.transfer import freeze_parameters, load_weights

# ------------------------------------------------------------------------------------------------------------------
# analysis/frequency.py


def _coupled(a: float, t: float, d: float, scale: float):
    """The 2-state system A = scale [[a, t], [0, d]], B = [1, 1]ᵀ, C = [1, 1], D = 0 as a bank of one."""
    A = scale * np.array([[[a, t], [0.0, d]]])
    return A, np.ones((1, 2, 1)), np.ones((1, 1, 2)), np.zeros((1, 1, 1))


def _coupled_closed_form(a: float, t: float, d: float, z: np.ndarray) -> np.ndarray:
    """H(z) of `_coupled` at scale 1, written out: 1/(z − a) + 1/(z − d) + t/((z − a)(z − d))."""
    return 1 / (z - a) + 1 / (z - d) + t / ((z - a) * (z - d))


def test_a_slightly_non_normal_system_keeps_its_coupling_term():
    """Kills F8 (the normality tolerance 10⁶ times looser: T₁₂ = 10⁻⁹ ‖A‖ was taken for rounding and the modal sum
    dropped the coupling t/((z − a)(z − d)), off by 10⁻⁶ relative near the poles). T₁₂ = 10⁻⁹ is 10⁵ times the
    rounding bound 16 n eps ‖A‖_F; reference: the closed form, at points 10⁻³ from the poles and on the unit circle."""
    a, t, d = 0.5, 1e-9, 0.5 + 2e-3
    A, B, C, D = _coupled(a, t, d, 1.0)
    schur = schur_form(A, B, C)
    z = np.concatenate([a + 1e-3 * np.exp(1j * np.array([0.3, 2.0, 4.0])), np.exp(1j * np.array([0.1, 1.5, 3.0]))])
    got = schur_transfer(schur, D, z[None])[0, 0, 0]
    np.testing.assert_allclose(got, _coupled_closed_form(a, t, d, z), rtol=1e-12, atol=0)
    assert not schur.normal[0]


@pytest.mark.parametrize("scale", [1e-15, 1.0, 1e6])
def test_the_normality_test_is_relative_to_the_scale_of_a(scale):
    """Kills F17 (the normality tolerance 16 n eps without ‖A‖: at ‖A‖ ~ 10⁻¹⁵ a coupling T₁₂ = 0.3 ‖A‖ fell below it
    and the transfer came back without its coupling term). H_s(s z) = H_1(z)/s for A_s = s A_1 with the same B, C;
    reference: the closed form at scale 1."""
    a, t, d = 0.4, 0.3, -0.6
    A, B, C, D = _coupled(a, t, d, scale)
    z = np.exp(1j * np.array([0.2, 1.3, 3.0]))
    got = schur_transfer(schur_form(A, B, C), D, scale * z[None])[0, 0, 0]
    np.testing.assert_allclose(got * scale, _coupled_closed_form(a, t, d, z), rtol=1e-12, atol=0)


# ------------------------------------------------------------------------------------------------------------------
# analysis/sampling.py


def test_the_zoh_refusal_names_the_eigenvalue_on_the_negative_axis_not_the_smallest():
    """Kills S23 (the refusal's eigenvalue chosen as the smallest |z|: for A = diag(0.1, −0.5) it took 0.1, found it
    off the negative axis and blamed a far-from-normal A, "condition number 1", for what is z = −0.5 having no real
    logarithm). Reference: the eigenvalues written into A."""
    bank = StateSpace(np.diag([0.1, -0.5])[None], np.ones((1, 2, 1)), np.ones((1, 1, 2)), np.zeros((1, 1, 1)), dt=0.1)
    with pytest.raises(ValueError, match=r"system 0 has the eigenvalue z = -0\.5 on \(or within rounding of\) the "
                                         r"negative real axis"):
        bank.to_continuous("zoh")


# ------------------------------------------------------------------------------------------------------------------
# ops/opaque.py


def test_exporting_reads_the_flag_first_then_the_public_function_then_says_no(monkeypatch):
    """Kills O9 (without the flag, ``torch.compiler.is_exporting()`` ignored: False), O10 (without either, an
    AttributeError) and O18 (the public function preferred over the flag: torch 2.11's dynamo folds it to True under
    torch.compile). Reference: the docstring's order, on a torch.compiler whose attributes are set here."""
    monkeypatch.setattr(torch.compiler, "_is_exporting_flag", True, raising=False)
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: False, raising=False)
    assert exporting() is True
    monkeypatch.setattr(torch.compiler, "_is_exporting_flag", False)
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    assert exporting() is False
    monkeypatch.delattr(torch.compiler, "_is_exporting_flag")
    assert exporting() is True
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: False)
    assert exporting() is False
    monkeypatch.delattr(torch.compiler, "is_exporting")
    assert exporting() is False


# ------------------------------------------------------------------------------------------------------------------
# train/transfer.py: a two-layer module and state dicts built here are the reference


def _two_layer():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(2, 3)
            self.head = nn.Linear(3, 1)

    torch.manual_seed(0)
    return Net()


def _state(seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) for k, v in _two_layer().state_dict().items()}


_UNPICKLED: list[str] = []


def _record(word: str) -> str:
    """What a hostile checkpoint's pickle would call on loading (it only records the call)."""
    _UNPICKLED.append(word)
    return word


class _Payload:
    def __reduce__(self):
        return _record, ("ran",)


def test_a_checkpoint_that_runs_code_on_unpickling_is_refused_unrun(tmp_path):
    """Kills T2 (``torch.load(..., weights_only=False)``: a checkpoint's pickle may call any importable function, so a
    downloaded run ran its author's code on ``init_from``). Reference: the file holds a valid state dict beside an
    object whose unpickling calls `_record`; it must be refused (torch's weights-only unpickler) and the call not
    made."""
    path = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {"model." + k: v for k, v in _state(1).items()}, "extra": _Payload()}, path)
    _UNPICKLED.clear()
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_weights(_two_layer(), path)
    assert _UNPICKLED == []


def test_a_checkpoint_saved_on_a_gpu_loads_on_the_cpu(tmp_path, monkeypatch):
    """Kills T3 (``torch.load`` without ``map_location="cpu"``: a run trained on a GPU could not be fine-tuned on a
    machine without one: "Attempting to deserialize object on a CUDA device"). The checkpoint is written with its
    storages tagged ``cuda:0``, as a GPU run's are; reference: the hand-built state dict it holds."""
    if torch.cuda.is_available():
        pytest.skip("simulates a machine without CUDA; this one has it")
    state = _state(2)
    path = tmp_path / "gpu_run.ckpt"
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save({"state_dict": {"model." + k: v for k, v in state.items()}}, path)
    with pytest.raises(RuntimeError, match="CUDA"):  # (the file is tagged as a GPU run's)
        torch.load(path, weights_only=True)
    net = _two_layer()
    report = load_weights(net, path)
    assert sorted(report.loaded) == sorted(state)
    assert all(torch.equal(v, state[k]) and v.device.type == "cpu" for k, v in net.state_dict().items())


@pytest.mark.parametrize("source", [{}, {"state_dict": {}, "hyper_parameters": {"model": {"d_model": 8}}},
                                    {"epoch": 3, "note": "no weights"}])
def test_a_source_without_tensors_is_named_as_such(source):
    """Kills T5 (the no-tensor check dropped: an empty or weightless source was refused as a model that differs,
    "absent from the source: ['body.weight', ...]", which sends the user looking for a configuration mismatch)."""
    with pytest.raises(ValueError, match=r"init_from '<state dict>' holds no tensors \(expected a checkpoint or a "
                                         r"state_dict\)"):
        load_weights(_two_layer(), source)


def test_a_head_parameter_of_another_shape_but_the_same_size_is_kept_not_loaded():
    """Kills T10 (the head compared by element count: a (2, 3) head against a source's (3, 2) was passed to
    ``load_state_dict``, which raised a size-mismatch RuntimeError, instead of being kept at its value and reported).
    Reference: the hand-built source; the body is the source's, the head the model's own zeros."""
    class Bare(nn.Module):
        def __init__(self, shape):
            super().__init__()
            self.body = nn.Linear(2, 2)
            self.head = nn.Parameter(torch.zeros(shape))

    source = {"body.weight": torch.full((2, 2), 0.5), "body.bias": torch.tensor([1.0, -1.0]),
              "head": torch.ones(3, 2)}
    net = Bare((2, 3))
    report = load_weights(net, source)
    assert report.head_not_loaded == {"head": ((2, 3), (3, 2))} and report.loaded == ["body.weight", "body.bias"]
    assert torch.equal(net.body.weight, source["body.weight"]) and torch.equal(net.body.bias, source["body.bias"])
    assert torch.equal(net.head, torch.zeros(2, 3))


def test_backbone_freezes_a_module_whose_name_only_starts_with_head():
    """Kills T13 ("backbone" as the names not starting with "head": a ``headnorm`` before the head stayed trainable
    in a linear probe). Reference: the parameter names written out; only ``head.*`` trains."""
    net = nn.Module()
    net.body = nn.Linear(2, 3)
    net.headnorm = nn.LayerNorm(3)
    net.head = nn.Linear(3, 1)
    frozen = freeze_parameters(net, "backbone")
    assert frozen == ["body.weight", "body.bias", "headnorm.weight", "headnorm.bias"]
    assert [n for n, p in net.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]


@pytest.mark.parametrize("values", [[1.0, float("nan")], [float("nan"), float("nan")], [0.0, float("nan")],
                                    [0.0, float("inf")]])
def test_a_gradient_with_nan_or_inf_is_kept(values):
    """Kills O14 (``absent_if_zero`` as max |g| > 0: a gradient holding a NaN compares False and was dropped as absent,
    so a kernel skipped it as zero and a NaN upstream became a silently finite gradient). Reference: the definition,
    None only for an all-zero gradient; NaN and inf are not zero."""
    grad = torch.tensor(values, dtype=torch.float64)
    assert absent_if_zero(grad) is grad


_VIEW_OPS: dict[str, object] = {}


def test_eager_views_and_autograd_reads_conjugate_and_negative_views_in_a_compiled_graph():
    """Kills O15 (``eager_views_and_autograd`` without the views guard: the compiled value-cache op of
    ``layers.cache``, whose body runs a layer's whole plan, read conj(x) as x and −Im x as Im x below the Conjugate
    and Negative keys: probe 18's wrong S4 C_true). In a graph compiled by AOTAutograd a custom op's body runs below
    those keys; reference: numpy's conj(x) and −Im x, as the eager call gives."""
    if "views" not in _VIEW_OPS:
        @torch.library.custom_op("ssmkit::probe_mutants_freq_cached_views", mutates_args=())
        def cached_views(x: torch.Tensor) -> list[torch.Tensor]:
            with eager_views_and_autograd():
                return [x.conj() * 1, x.conj().imag * 1]

        @cached_views.register_fake
        def _(x):
            return [torch.empty_like(x), torch.empty(x.shape, dtype=torch.float64, device=x.device)]

        _VIEW_OPS["views"] = cached_views
    op = _VIEW_OPS["views"]
    x = torch.tensor([1 + 2j, -3 + 0.5j, 0.25 - 4j], dtype=torch.complex128)
    ref = np.conj(x.numpy())
    compiled = torch.compile(lambda x: [p * 1 for p in op(x)], backend="aot_eager", fullgraph=True)
    for conj, neg_imag in (op(x), compiled(x)):
        assert np.array_equal(conj.resolve_conj().numpy(), ref)
        assert np.array_equal(neg_imag.resolve_neg().numpy(), ref.imag)


def test_a_state_dict_with_non_tensor_entries_loads_its_tensors():
    """Kills T20 (non-tensor entries kept as tensors to load: a ``torch.save`` file with an ``epoch`` beside the
    weights was refused, "not in this model: ['epoch']"). Reference: the hand-built state dict."""
    state = _state(3)
    net = _two_layer()
    report = load_weights(net, {**state, "epoch": 7, "note": "fine-tune me"})
    assert sorted(report.loaded) == sorted(state)
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
