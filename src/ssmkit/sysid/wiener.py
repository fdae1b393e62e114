"""Deep Wiener models (Bonassi et al., arXiv 2312.06211): a stack of LTI SSM layers, each followed by a static
nonlinearity and a linear skip, between input and output normalisation, with an optional initial-state encoder.

    ū = (u - μ_u) / σ_u,   x⁰ = E ū                                       (encoder, m → H)
    block ℓ:  η = LTI_ℓ(x^{ℓ-1}),   x^ℓ = σ(η) + F_ℓ x^{ℓ-1}               (a Wiener system plus a linear skip)
    y = σ_y (W x^L + b) + μ_y                                              (decoder, H → p)

Every LTI_ℓ is any registered ssmkit layer with a state-space realisation (``s4d``, ``lru``, ``s5``, ``s4``, ...).
The model follows the layer protocol: ``forward(u, state)`` simulates a whole record, ``step(u_t, state)`` one
sample (a controller runs it on line), ``initial_state(B)`` is zeros, and ``estimate_state(u_past, y_past)`` gives
the state after a window of measured data (the encoder), so a simulation need not start from rest.

Stability (δISS). If every LTI block is Schur stable (spectral radius < 1) and σ is Lipschitz, each block is
incrementally input-to-state stable and so is the cascade: two simulations from different initial states converge,
and bounded input differences give bounded output differences. The default layers guarantee Schur stability by
construction for every parameter value (S4D: Re λ = -exp(·) < 0, so |exp(Δλ)| < 1; LRU: |λ| = exp(-exp(ν)) < 1);
:meth:`DeepWiener.is_stable` checks the trained model's exported poles.

Time-varying blocks (``time_varying=True``, opt-in): a selective layer (``mamba``, ``mamba2``, ``rglru``) in place of
LTI_ℓ, its Δ_t (or gate) a function of the block's input, so a block can have level-dependent time constants. Such a
block is not a Wiener system and has no realisation: :meth:`state_space` and the control analysis cover the LTI
blocks only, and :meth:`is_stable` certifies nothing about the others (it returns False for a model that has any).

Sensor range (``output_range``, a pair of limits lo < hi, or one pair per output; opt-in): a sensor that saturates
(Cascaded Tanks' level sensor at 10 V) measures y = min(max(ŷ, lo), hi) of the process output ŷ. The model then clips
its simulated output to that range, and training scores a measured sample at a limit as censored
(:meth:`DeepWiener.censored_error`): it says only that the process is beyond the limit, so ŷ beyond it is not penalised
and ŷ short of it is. The blocks, decoder and skip stay linear in ŷ's range, so the state keeps the unclipped level.
With several outputs in different units (a position in m, a force in kN) each output k has its own limits lo_k < hi_k,
``None`` for an output without a limit; one pair applies to every output (the form of a single-output model).

Per-block nonlinearities (``block_activations``, opt-in): σ_ℓ may differ between blocks, e.g. a saturating tanh in the
first block only (a bounded internal signal: an upper tank that empties or overflows) and ELU after it. Every σ in
:data:`ACTIVATIONS` is Lipschitz, so the δISS argument below is unchanged.

Sampling time: ``dt`` is the data's Ts in seconds; :meth:`state_space` exports each block with that ``dt``, so poles
and frequency responses come in physical units. ``timescale`` = (τ_min, τ_max) seconds sets the layers' initial Δ: a
layer discretises ẋ = λ x with step Δ (samples per unit of its continuous time), so one unit of that time lasts
τ = Ts/Δ seconds and the continuous poles are s = log(z)/Ts = Δλ/Ts = λ/τ (exact for ZOH). Δ = Ts/τ with τ drawn
log-uniformly in [τ_min, τ_max] makes the initial dynamics in seconds independent of Ts (S4D-Lin's Re λ = -1/2 gives
time constants 2τ): the same timescale fits the same process sampled at another rate. Two layers read it otherwise:
DLR's Δ sets only its modes' decay (its initial phases 2πn/M are per sample, so their frequencies in Hz scale as
1/Ts), and S5 multiplies its Δ by its ``step_rescale`` as well.

Irregular sampling and the encoder (``encoder_times``, opt-in): the blocks simulate irregularly sampled data with
``forward(..., intervals=)``, but the initial-state encoder is a learned map of the window's samples, by default
blind to when they were taken (deepSI's encoder assumes one Ts alike). With ``encoder_times=True`` it also reads
log τ_k of each window sample (0 for a sample one period after the one before it), so a window of widely spaced
samples and one of close samples with the same values give different states; ``estimate_state(u, y, intervals=)``.

Missing outputs and the encoder (``encoder_mask``, opt-in): a window's output that was not measured (NaN) reaches the
encoder as the training mean μ_y, 0 once normalised, the same number as a measured sample at the mean. With
``encoder_mask=True`` the encoder also reads, per window sample k and output j, the indicator M_kj = 1 where y_kj was
measured and 0 where it is missing (taken from the NaN of ``y_past``), so its features per sample are
[(u_k − μ_u)/σ_u, M_k ⊙ (y_k − μ_y)/σ_y, M_k, log τ_k (with ``encoder_times``)]: the usual input of a network that
imputes by learning (the missing-indicator method; Lipton et al., arXiv 1606.04130; Che et al., arXiv 1606.01865).
"""

from __future__ import annotations

import inspect
import math
import numbers
from typing import Any, Sequence

import torch
from torch import nn

from ssmkit.layers.checks import check_positive_int, checkpoint_dtype, parameter_dtype
from ssmkit.layers.irregular import require_intervals
from ssmkit.layers.registry import build, layer_class
from ssmkit.layers.state import TensorSpec, check_state, state_from_vector, zeros_from_spec
from ssmkit.models.pattern import check_layer_options
from ssmkit.ops.irregular import check_intervals
from ssmkit.utils import check_sampling_time, distinct_names

# the keys of a saved model (:meth:`DeepWiener.checkpoint`, :meth:`ssmkit.sysid.ensemble.WienerEnsemble.checkpoint`)
DEEP_WIENER_KEY = "deep_wiener"  # a DeepWiener's constructor arguments
ENSEMBLE_KEY = "wiener_ensemble"  # a WienerEnsemble's list of member arguments
STATE_KEY = "state_dict"  # the weights
SIGNALS_KEY = "signals"  # the signal names, only when named

ACTIVATIONS = {"elu": nn.ELU, "gelu": nn.GELU, "tanh": nn.Tanh, "relu": nn.ReLU, "silu": nn.SiLU, None: nn.Identity}


def _check_signals(inputs, outputs, m: int, p: int) -> dict[str, tuple[str, ...]]:
    """The signal names of :meth:`DeepWiener.name_signals`, checked (m distinct inputs, p distinct outputs)."""
    checked = {}
    for what, value, n in (("inputs", inputs, m), ("outputs", outputs, p)):
        if not distinct_names(value, n):
            raise ValueError(f"{what} must be {n} distinct non-empty strings, one per {what[:-1]}; got {value!r}")
        checked[what] = tuple(value)
    return checked


def load_strictly(model: nn.Module, state: dict[str, Any], what: str) -> None:
    """``model.load_state_dict(state)`` (strict), with a checkpoint whose weights do not fit the model its own
    arguments build (a weight lost or added, another shape) as a ValueError naming them (torch's RuntimeError text).

    Args:
        model: the model the checkpoint's arguments built.
        state: the checkpoint's ``state_dict``.
        what: the checkpoint's kind, for the message (``"DeepWiener"``).
    """
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"the {what} checkpoint's weights do not fit the model its arguments build (a weight "
                         f"missing, added or of another shape): {err}") from err


def checkpoint_entries(key: str, arguments: Any, state: dict[str, Any], signals: dict[str, tuple[str, ...]] | None,
                       metadata: dict[str, Any], reserved: tuple[str, ...] = ()) -> dict[str, Any]:
    """The dict a model's ``checkpoint`` returns: ``{key: arguments, STATE_KEY: state, SIGNALS_KEY: the signal names
    as lists (only when named), **metadata}``, with metadata that would overwrite one of the model's keys refused.

    Args:
        key: the model's key (``DEEP_WIENER_KEY``, ``ENSEMBLE_KEY``).
        arguments: what the model is rebuilt from (its constructor's arguments, or the members').
        state: its ``state_dict()``.
        signals: its signal names (``{"inputs": (...), "outputs": (...)}``) or None.
        metadata: the plain entries to store beside the model.
        reserved: further keys that metadata must not set (checked after ``key``, before the weights and names).

    Returns:
        the checkpoint dict.
    """
    for name in (key, *reserved, STATE_KEY, SIGNALS_KEY):
        if name in metadata:
            raise ValueError(f"metadata must not set {name!r}: the model sets it")
    named = {} if signals is None else {SIGNALS_KEY: {k: list(v) for k, v in signals.items()}}
    return {key: arguments, STATE_KEY: state, **named, **metadata}


def finish_loading(model: nn.Module, checkpoint: dict[str, Any], what: str) -> nn.Module:
    """The last steps of a ``from_checkpoint``: the checkpoint's weights loaded strictly (:func:`load_strictly`), its
    signal names given back (when saved), and the model in eval mode.

    Args:
        model: the model the checkpoint's arguments built.
        checkpoint: the checkpoint dict (``STATE_KEY`` and optionally ``SIGNALS_KEY``).
        what: the checkpoint's kind, for the message (``"DeepWiener"``).

    Returns:
        the model, in eval mode.
    """
    load_strictly(model, checkpoint[STATE_KEY], what)
    if checkpoint.get(SIGNALS_KEY) is not None:
        model.name_signals(**checkpoint[SIGNALS_KEY])
    return model.eval()


class DeepWiener(nn.Module):
    """A deep Wiener model of an m-input p-output system (see the module docstring).

    Args:
        n_inputs: m, inputs per sample.
        n_outputs: p, outputs per sample.
        d_model: H, the width of every block.
        n_layers: the number of Wiener blocks.
        layer: a registered LTI layer name (it must have a state-space realisation).
        layer_options: the layer's options (``d_state``, inits, ...), without ``d_model``/``device``/``dtype``.
        activation: σ, one of ``"elu"`` (Bonassi et al.), ``"gelu"``, ``"tanh"``, ``"relu"``, ``"silu"``, None.
        dt: the sampling time Ts of the data, seconds.
        timescale: (τ_min, τ_max) in seconds: the range of the time unit τ of the layers' continuous dynamics, so
            the initial continuous poles are s = λ/τ (module docstring); passed as the layers' Δ range dt_min =
            Ts / τ_max, dt_max = Ts / τ_min (in samples). None keeps the layer's defaults.
        encoder_window: n > 0 adds an initial-state encoder reading n past samples of the input and output; 0 for none.
        encoder_hidden: width of the encoder's hidden layer.
        time_varying: also accept layers without a state-space realisation (selective, input-dependent: ``mamba``,
            ``rglru``; they need ``step`` and a fixed-size state); False (the default) keeps the model a deep
            Wiener model of LTI blocks.
        output_range: the output sensors' range in physical units: one pair of limits lo < hi for every
            output, or a list of p pairs, one per output in the outputs' order (module docstring); a limit may be
            None (no limit on that side) and an output's pair None (no limit on it). The output is clipped to it and
            training treats measurements at a limit as censored. None: no clipping.
        block_activations: one σ per block (``n_layers`` names from the same choices as ``activation``, None for
            none) in place of ``activation`` (module docstring); None: every block uses ``activation``.
        encoder_times: the initial-state encoder also reads the log of each window sample's interval (the time since
            the sample before it, in periods of ``dt``: 0 for regular sampling), so its estimate knows when the
            samples it read were taken (module docstring); needs ``encoder_window`` > 0.
        encoder_mask: the initial-state encoder also reads, per window sample and output, 1 where the output was
            measured and 0 where it is missing (NaN in ``estimate_state``'s ``y_past``), so a missing sample (read as
            the mean) differs from a measured one at the mean (module docstring); needs ``encoder_window`` > 0.
        device, dtype: of the parameters.
    """

    def __init__(
        self,
        n_inputs: int,
        n_outputs: int,
        d_model: int = 8,
        n_layers: int = 4,
        layer: str = "s4d",
        layer_options: dict[str, Any] | None = None,
        activation: str | None = "elu",
        dt: float = 1.0,
        timescale: tuple[float, float] | None = None,
        encoder_window: int = 0,
        encoder_hidden: int = 64,
        time_varying: bool = False,
        output_range: Sequence | None = None,
        block_activations: Sequence[str | None] | None = None,
        encoder_times: bool = False,
        encoder_mask: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("n_inputs", n_inputs), ("n_outputs", n_outputs), ("d_model", d_model), ("n_layers", n_layers)):
            check_positive_int(value, name)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {list(ACTIVATIONS)}; got {activation!r}")
        dt = check_sampling_time(dt)
        if not isinstance(time_varying, bool):
            raise ValueError(f"time_varying must be a bool; got {time_varying!r}")
        cls = layer_class(layer)
        if not cls.capabilities.state_space and not time_varying:
            raise ValueError(
                f"DeepWiener needs LTI layers with a state-space realisation; {layer!r} has none "
                f"(LTI layers: {[n for n in _lti_layers()]}; time_varying=True accepts selective layers)"
            )
        if not cls.capabilities.step:
            raise ValueError(f"DeepWiener runs its layers one sample at a time: {layer!r} has no step")
        if isinstance(encoder_window, bool) or not isinstance(encoder_window, int) or encoder_window < 0:
            raise ValueError(f"encoder_window must be an int >= 0; got {encoder_window!r}")
        check_positive_int(encoder_hidden, "encoder_hidden")
        if not isinstance(encoder_times, bool):
            raise ValueError(f"encoder_times must be a bool; got {encoder_times!r}")
        if encoder_times and not encoder_window:
            raise ValueError("encoder_times reads the encoder window's sample times: give encoder_window > 0")
        if not isinstance(encoder_mask, bool):
            raise ValueError(f"encoder_mask must be a bool; got {encoder_mask!r}")
        if encoder_mask and not encoder_window:
            raise ValueError("encoder_mask tells the encoder which window outputs were measured: give "
                             "encoder_window > 0")
        output_range = _check_range(output_range, n_outputs)
        if block_activations is not None:
            if (not isinstance(block_activations, (tuple, list)) or len(block_activations) != n_layers
                    or any(not (a is None or isinstance(a, str)) or a not in ACTIVATIONS for a in block_activations)):
                raise ValueError(f"block_activations must be None or {n_layers} (n_layers) names, each one of "
                                 f"{list(ACTIVATIONS)}; got {block_activations!r}")
            block_activations = tuple(block_activations)
        if layer_options is not None and not isinstance(layer_options, dict):  # as SequenceModel words it
            raise ValueError(f"layer_options must be a dict of the layer's options, or None; got {layer_options!r}")
        options = dict(layer_options or {})
        for key in ("d_model", "device", "dtype"):
            if key in options:
                raise ValueError(f"layer_options must not set {key}: the model sets it")
        check_layer_options(layer, options)  # a misspelt option: a ValueError naming the layer's options
        if timescale is not None:
            if (not isinstance(timescale, (tuple, list)) or len(timescale) != 2
                    or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in timescale)):
                raise ValueError(f"timescale must be None or (τ_min, τ_max) seconds, two numbers; got {timescale!r}")
            lo, hi = timescale
            if not (0 < lo < hi < math.inf):
                raise ValueError(f"timescale must be (τ_min, τ_max) seconds with 0 < τ_min < τ_max; got {timescale!r}")
            if not {"dt_min", "dt_max"} <= set(inspect.signature(cls.__init__).parameters):
                raise ValueError(f"timescale sets the layers' initial Δ range (dt_min, dt_max), and {layer!r} has no Δ: "
                                 "leave timescale None and set its own init options in layer_options")
            if {"dt_min", "dt_max"} & set(options):
                raise ValueError("give the layers' Δ range either as timescale (seconds) or as layer_options dt_min/"
                                 f"dt_max (samples), not both; got timescale={timescale!r} and layer_options "
                                 f"{ {k: options[k] for k in ('dt_min', 'dt_max') if k in options} }")
            options["dt_min"] = dt / hi  # Δ = Ts/τ: the longest time unit gives the smallest step
            options["dt_max"] = dt / lo
        factory = {"device": device, "dtype": parameter_dtype(dtype)}
        # the constructor's arguments (plain values): a saved model is {"deep_wiener": these, "state_dict": ...}
        self.arguments: dict[str, Any] = {
            "n_inputs": n_inputs, "n_outputs": n_outputs, "d_model": d_model, "n_layers": n_layers, "layer": layer,
            "layer_options": dict(layer_options or {}), "activation": activation, "dt": float(dt),
            "timescale": None if timescale is None else tuple(float(v) for v in timescale),
            "encoder_window": encoder_window, "encoder_hidden": encoder_hidden,
        }
        if time_varying:  # stored only when set: checkpoints of LTI models keep their arguments
            self.arguments["time_varying"] = True
        if output_range is not None:  # likewise
            self.arguments["output_range"] = output_range
        if block_activations is not None:  # likewise
            self.arguments["block_activations"] = block_activations
        if encoder_times:  # likewise
            self.arguments["encoder_times"] = True
        if encoder_mask:  # likewise
            self.arguments["encoder_mask"] = True
        self.output_range = output_range
        self._limits = _limits(output_range)  # (lo, hi): two floats, or two p-lists with ∓inf for none
        self.lti = bool(cls.capabilities.state_space)
        self.n_inputs, self.n_outputs, self.d_model = n_inputs, n_outputs, d_model
        self.dt = float(dt)
        self.layer_name = layer
        self.encoder_window = encoder_window
        self.encoder_times = encoder_times
        self.encoder_mask = encoder_mask
        self.register_buffer("u_mean", torch.zeros(n_inputs, **factory))
        self.register_buffer("u_std", torch.ones(n_inputs, **factory))
        self.register_buffer("y_mean", torch.zeros(n_outputs, **factory))
        self.register_buffer("y_std", torch.ones(n_outputs, **factory))
        self.encoder = nn.Linear(n_inputs, d_model, **factory)
        self.layers = nn.ModuleList(build(layer, d_model=d_model, **factory, **options) for _ in range(n_layers))
        # the options can take a capability away (bidirectional=True: a non-causal layer, which forward would run on
        # the future inputs, with no step and no realisation): checked on the built layer, as the class was above
        for capability in ("step",) if time_varying else ("step", "state_space"):
            why = self.layers[0].unsupported(capability)
            if why is not None:
                raise ValueError(f"DeepWiener simulates causally, one sample at a time: {layer!r} with layer_options "
                                 f"{dict(layer_options or {})} has no {capability.replace('_', ' ')}: {why}")
        self.skips = nn.ModuleList(nn.Linear(d_model, d_model, bias=False, **factory) for _ in range(n_layers))
        self.activation = ACTIVATIONS[activation]()
        self.block_activations = None  # σ per block when they differ (no parameters: the state_dict is the same)
        if block_activations is not None:
            self.block_activations = nn.ModuleList(ACTIVATIONS[a]() for a in block_activations)
        self.decoder = nn.Linear(d_model, n_outputs, **factory)
        # the names of the inputs and outputs (name_signals; build_model sets them from the benchmark)
        self.signals: dict[str, tuple] | None = None
        with torch.no_grad():
            for skip in self.skips:
                skip.weight.copy_(torch.eye(d_model))  # start as a residual stack: x^ℓ = σ(η) + x^{ℓ-1}
        sizes = [_real_size(layer_.state_spec()) for layer_ in self.layers]  # (refuses growing states)
        self.state_encoder = None
        if encoder_window:
            # per window sample: m inputs, p outputs, p measured-indicators (encoder_mask), log τ (encoder_times)
            per_sample = n_inputs + n_outputs * (1 + int(encoder_mask)) + int(encoder_times)
            self.state_encoder = nn.Sequential(
                nn.Linear(encoder_window * per_sample, encoder_hidden, **factory),
                nn.Tanh(),
                nn.Linear(encoder_hidden, sum(sizes), **factory),
            )
            with torch.no_grad():
                self.state_encoder[-1].weight.mul_(0.1)
                self.state_encoder[-1].bias.zero_()

    @property
    def dt(self) -> float:
        """Ts in seconds: the data's sampling time, the unit of ``forward``'s ``intervals`` and the exported systems'
        dt. Kept in :attr:`arguments`, so an assigned value is the one the repr shows and :meth:`checkpoint` saves (a
        plain attribute had reverted to the constructor's value on loading: a model re-labelled to its data's Ts, as
        :func:`~ssmkit.sysid.to_control`'s message suggests, came back at the old one and its records were then
        simulated with intervals scaled by the ratio)."""
        return self.arguments["dt"]

    @dt.setter
    def dt(self, value: float) -> None:
        # stored as given (a broken value is refused by whoever reads it: the analysis, a checkpoint's loading), a
        # real number as a plain float (a NumPy scalar would not load under torch.load(weights_only=True))
        real = isinstance(value, numbers.Real) and not isinstance(value, bool)
        self.arguments["dt"] = float(value) if real else value

    def extra_repr(self) -> str:
        # the sizes, the layer and Ts always; every other constructor argument where it differs from the default
        always = ("n_inputs", "n_outputs", "d_model", "n_layers", "layer", "dt")
        defaults = {name: p.default for name, p in inspect.signature(DeepWiener).parameters.items()}
        defaults["layer_options"] = {}  # None is stored as {}
        shown = [f"{name}={self.arguments[name]!r}" for name in always]
        shown += [f"{name}={value!r}" for name, value in self.arguments.items()
                  if name not in always and value != defaults.get(name)]
        return ", ".join(shown)

    # ------------------------------------------------------------------------------------------------------------
    # normalisation

    @torch.no_grad()
    def set_normalisation(self, u: Sequence[torch.Tensor], y: Sequence[torch.Tensor]) -> None:
        """Store the mean and std of the estimation data (every record pooled) for the input and output scaling.

        A channel that is constant in the data (std at most 10 machine epsilons of its mean's magnitude: rounding)
        gets the scale 1, as scikit-learn's ``StandardScaler`` does: dividing by a std of ~0 would turn a change of
        0.01 at run time into ~1e10 in the model.

        Args:
            u: records (L, m) of inputs.
            y: records (L, p) of outputs.
        """
        uu, yy = torch.cat(list(u)), torch.cat(list(y))
        self.u_mean.copy_(uu.mean(0))
        self.u_std.copy_(channel_scale(uu))
        self.y_mean.copy_(yy.mean(0))
        self.y_std.copy_(channel_scale(yy))

    def _check(self, u: torch.Tensor, per_step: bool) -> None:
        want = (2 if per_step else 3)
        if not isinstance(u, torch.Tensor) or u.dim() != want or u.shape[-1] != self.n_inputs or 0 in u.shape:
            shape = f"(B, {self.n_inputs})" if per_step else f"(B, L, {self.n_inputs})"
            found = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
            raise ValueError(f"u must be {shape} for n_inputs={self.n_inputs}; got {found}")
        if u.device != self.u_mean.device:  # (inside, the normalisation raised a RuntimeError)
            raise ValueError(f"u must be on the model's device {self.u_mean.device}; got {u.device}")

    def _as_model_dtype(self, u: torch.Tensor) -> tuple[torch.dtype, torch.Tensor]:
        """(the dtype to return the output in, u in the parameters' dtype): the benchmark records are float64, and
        a float32 model must read them as the layers read any real input."""
        if u.is_complex():
            raise ValueError(f"u must be real; got {u.dtype}")
        dtype = self.u_mean.dtype
        return (u.dtype if u.is_floating_point() else dtype), u.to(dtype)

    # ------------------------------------------------------------------------------------------------------------
    # the protocol

    def initial_state(self, batch_size: int) -> list:
        """The state at rest: one zero state per block."""
        return [layer.initial_state(batch_size) for layer in self.layers]

    def forward(self, u: torch.Tensor, state: list | None = None, return_state: bool = True, saturate: bool = True,
                intervals: torch.Tensor | None = None):
        """Simulate: u (B, L, m) in physical units -> y (B, L, p) in physical units, from ``state`` (None: rest).

        Args:
            u: (B, L, m) inputs, any real dtype (computed in the parameters' dtype, as the layers do).
            state: per-block states (``initial_state``, ``estimate_state``, ``step`` or a previous call), or None.
            return_state: also return the final states.
            saturate: clip the output to ``output_range`` (when set); False gives the unclipped ŷ (training).
            intervals: None (samples every Ts), or (B, L) real > 0: the time from the previous sample to each
                sample in units of the sampling time Ts, (t_k − t_{k−1}) / Ts, for data with missing or irregular
                samples; each block's continuous-time system is sampled at those times with the input held over each
                gap (layers that declare ``takes_intervals``: S5, S4D, DSS, LRU, EMA, DLR, and Mamba, Mamba-2,
                RG-LRU with ``time_varying``, whose Δ_t or gate is scaled by the gap; a ValueError otherwise).

        Returns:
            y (B, L, p) in u's dtype (the parameters' for integer u), and the list of final block states (None when
            not asked for).
        """
        self._check(u, per_step=False)
        out_dtype, u = self._as_model_dtype(u)
        states = state if state is not None else [None] * len(self.layers)
        if len(states) != len(self.layers):
            raise ValueError(f"state must be a list of {len(self.layers)} block states; got {len(states)}")
        self._check_takes_intervals(intervals)
        extra = {} if intervals is None else {"intervals": intervals}
        x = self.encoder((u - self.u_mean) / self.u_std)  # (B, L, H)
        finals = []
        for layer, skip, sigma, s in zip(self.layers, self.skips, self._sigmas(), states):
            eta, s = layer(x, s, return_state=return_state, **extra)
            x = sigma(eta) + skip(x)
            finals.append(s)
        y = self.decoder(x) * self.y_std + self.y_mean  # (B, L, p)
        return (self.saturate(y) if saturate else y).to(out_dtype), (finals if return_state else None)

    def step(self, u_t: torch.Tensor, state: list, interval: torch.Tensor | None = None):
        """One sample: u_t (B, m) -> y_t (B, p) and the next states (what a controller runs on line).

        y_t depends on u_t itself (direct feedthrough: each block's D + C B̄ in the control convention, and the
        skips), as the SSM recurrence reads u_t before its output; a feedback law u_t = K(y_t) around it is an
        algebraic loop, so a controller feeds back y_{t-1} (or predicts with the planned u_t, as MPC does).

        Args:
            u_t: (B, m) inputs at one sample, any real dtype.
            state: per-block states.
            interval: None (one sampling time Ts since the previous sample), or (B,) real > 0: the time since the
                previous sample in units of Ts (as ``forward``'s ``intervals``).

        Returns:
            y_t (B, p) in u_t's dtype (the parameters' for integer u_t), and the next states.
        """
        self._check(u_t, per_step=True)
        out_dtype, u_t = self._as_model_dtype(u_t)
        if not isinstance(state, (list, tuple)) or len(state) != len(self.layers):
            raise ValueError(f"state must be a list of {len(self.layers)} block states (from initial_state)")
        self._check_takes_intervals(interval)
        extra = {} if interval is None else {"interval": interval}
        x = self.encoder((u_t - self.u_mean) / self.u_std)  # (B, H)
        nxt = []
        for layer, skip, sigma, s in zip(self.layers, self.skips, self._sigmas(), state):
            eta, s = layer.step(x, s, **extra)
            x = sigma(eta) + skip(x)
            nxt.append(s)
        return self.saturate(self.decoder(x) * self.y_std + self.y_mean).to(out_dtype), nxt

    def _check_takes_intervals(self, intervals: torch.Tensor | None) -> None:
        """Raise ``ValueError`` when sampling intervals are given and a block's layer does not take them."""
        if intervals is not None:
            for layer in self.layers:
                require_intervals(layer)

    def _sigmas(self) -> list[nn.Module]:
        """σ_ℓ of every block."""
        return list(self.block_activations) if self.block_activations is not None else [self.activation] * len(self.layers)

    def saturate(self, y: torch.Tensor) -> torch.Tensor:
        """What the sensor measures of the process output: y clipped to ``output_range`` (unchanged without one).

        Args:
            y: (..., p) outputs in physical units.

        Returns:
            (..., p) the clipped outputs.
        """
        if self.output_range is None:
            return y
        lo, hi = self._limit_values(y)
        return y.clamp(min=lo, max=hi)

    def censored_error(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The simulation error ŷ − y with measurements at a limit of ``output_range`` treated as censored: where
        y ≥ hi the error is min(ŷ − hi, 0) (the process may be anywhere above hi), where y ≤ lo it is max(ŷ − lo, 0);
        elsewhere ŷ − y, so an unclipped ŷ beyond a limit is still penalised where the measurement is not at it.
        Without ``output_range`` this is ŷ − y.

        Args:
            y_hat: (..., p) the unclipped simulated outputs (``forward(..., saturate=False)``).
            y: (..., p) the measured outputs.

        Returns:
            (..., p) the errors, in physical units.
        """
        if self.output_range is None:
            return y_hat - y
        lo, hi = self._limit_values(y_hat)
        if hi is not None:
            y_hat = torch.where(y >= hi, y_hat.clamp(max=hi), y_hat)
        if lo is not None:
            y_hat = torch.where(y <= lo, y_hat.clamp(min=lo), y_hat)
        return y_hat - y

    def _limit_values(self, y: torch.Tensor) -> tuple:
        """(lo, hi) to clamp y (..., p) with: floats or None for one range, (p,) tensors of y's dtype and device
        for a range per output (∓inf where an output has no limit on that side)."""
        lo, hi = self._limits
        if not isinstance(lo, list):
            return lo, hi
        if y.shape[-1] != self.n_outputs:
            raise ValueError(f"y must be (..., {self.n_outputs}) for n_outputs={self.n_outputs}; got {tuple(y.shape)}")
        return y.new_tensor(lo), y.new_tensor(hi)

    def estimate_state(self, u_past: torch.Tensor, y_past: torch.Tensor, intervals: torch.Tensor | None = None) -> list:
        """The block states after a window of measured data, by the initial-state encoder (``encoder_window`` = n).

        Args:
            u_past: (B, n, m) the n inputs before the simulation starts.
            y_past: (B, n, p) the n measured outputs there; NaN where an output was not measured (a missing sample,
                :class:`~ssmkit.sysid.records.IORecord`): the encoder reads it as the training mean y_mean, 0 once
                normalised (the simplest fill; the encoder, trained end to end on windows with the same gaps, learns
                what the measured samples tell it); with ``encoder_mask`` it also reads 1 where each output was
                measured, 0 where it is NaN (module docstring).
            intervals: with ``encoder_times``: None (the window sampled every ``dt``) or (B, n) real > 0, each window
                sample's time since the sample before it in periods of ``dt``; without it, None only (the encoder
                reads no times).

        Returns:
            per-block states to pass to ``forward``.
        """
        if self.state_encoder is None:
            raise ValueError("this DeepWiener has no state encoder: build it with encoder_window > 0")
        n = self.encoder_window
        for name, past in (("u_past", u_past), ("y_past", y_past)):  # as forward refuses a complex u
            if not isinstance(past, torch.Tensor) or past.is_complex():
                found = past.dtype if isinstance(past, torch.Tensor) else type(past).__name__
                raise ValueError(f"{name} must be a real tensor; got {found}")
        if u_past.dim() != 3 or u_past.shape[1:] != (n, self.n_inputs) or y_past.shape != (u_past.shape[0], n, self.n_outputs):
            raise ValueError(
                f"u_past must be (B, {n}, {self.n_inputs}) and y_past (B, {n}, {self.n_outputs}) for encoder_window={n}; "
                f"got {tuple(u_past.shape)} and {tuple(y_past.shape)}"
            )
        u_past, y_past = u_past.to(self.u_mean.dtype), y_past.to(self.y_mean.dtype)  # float64 records, float32 model
        missing = torch.isnan(y_past)
        y_past = torch.where(missing, self.y_mean, y_past)  # a missing output: 0 once normalised
        parts = [(u_past - self.u_mean) / self.u_std, (y_past - self.y_mean) / self.y_std]
        if self.encoder_mask:  # M = 1 where measured: a missing sample is no longer a measured one at the mean
            parts.append((~missing).to(y_past.dtype))
        if intervals is not None and not self.encoder_times:
            raise ValueError("this DeepWiener's encoder reads no sample times: build it with encoder_times=True to "
                             "give it the window's intervals")
        if self.encoder_times:
            if intervals is None:
                intervals = u_past.new_ones(u_past.shape[:2])
            check_intervals(intervals, tuple(u_past.shape[:2]), u_past.device)
            parts.append(torch.log(intervals.to(u_past.dtype))[..., None])  # 0 at the nominal period
        features = torch.cat(parts, dim=-1)
        v = self.state_encoder(features.flatten(1))  # (B, Σ sizes)
        states = state_from_vector(v, [zeros_from_spec(layer.state_spec(), 1, v.device) for layer in self.layers])
        for layer, s in zip(self.layers, states):
            check_state(s, layer.state_spec(), u_past.shape[0], layer.state_device())
        return states

    def drop_encoder(self) -> None:
        """Remove the initial-state encoder: the model then simulates from rest only, and its arguments (a
        checkpoint's) say ``encoder_window`` 0. For an encoder that served training only (windows started from its
        state, :attr:`ssmkit.sysid.recipes.Recipe.train_encoder`) on a benchmark whose test starts from rest."""
        self.state_encoder = None
        self.encoder_window = 0
        self.encoder_times = False
        self.encoder_mask = False
        self.arguments["encoder_window"] = 0
        self.arguments.pop("encoder_times", None)
        self.arguments.pop("encoder_mask", None)

    # ------------------------------------------------------------------------------------------------------------
    # signals

    def name_signals(self, inputs: Sequence[str], outputs: Sequence[str]) -> "DeepWiener":
        """Name the model's inputs and outputs: :func:`ssmkit.sysid.to_control` then names the python-control
        systems' signals without a benchmark, and :meth:`checkpoint` saves the names. ``build_model`` names them
        after the benchmark's (:func:`ssmkit.sysid.signal_names`).

        Args:
            inputs: the ``n_inputs`` distinct input names (a predictor's previous outputs included).
            outputs: the ``n_outputs`` distinct output names.

        Returns:
            the model (its ``signals``: ``{"inputs": (...), "outputs": (...)}``).
        """
        self.signals = _check_signals(inputs, outputs, self.n_inputs, self.n_outputs)
        return self

    # ------------------------------------------------------------------------------------------------------------
    # saving

    def checkpoint(self, **metadata: Any) -> dict[str, Any]:
        """What ``torch.save`` writes for this model (``ssmkit sysid``'s ``model.pt``; ``ssmkit analyze`` reads it).

        Args:
            metadata: more plain entries to store beside the model (recipe, benchmark, mode, ...).

        Returns:
            {"deep_wiener": the constructor's arguments (``arguments``), "state_dict": ..., "signals": the names of
            :meth:`name_signals` as lists (only when named), **metadata}.
        """
        return checkpoint_entries(DEEP_WIENER_KEY, dict(self.arguments), self.state_dict(), self.signals, metadata)

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any]) -> "DeepWiener":
        """The model of a :meth:`checkpoint` dict (built in the saved weights' dtype, float32 for float16/bfloat16
        weights; weights loaded strictly).

        Args:
            checkpoint: a dict with ``deep_wiener`` (the constructor's arguments) and ``state_dict`` (and
                ``signals``, the names of :meth:`name_signals`, when saved).

        Returns:
            the model, in eval mode.
        """
        if not isinstance(checkpoint, dict) or DEEP_WIENER_KEY not in checkpoint or STATE_KEY not in checkpoint:
            raise ValueError(f"a DeepWiener checkpoint is a dict with {DEEP_WIENER_KEY!r} (its arguments) and "
                             f"{STATE_KEY!r}")
        state = checkpoint[STATE_KEY]
        # the saved dtype; float32 for weights saved in half precision (layers keep float32/float64 parameters)
        dtype = checkpoint_dtype(state["u_mean"].dtype if "u_mean" in state else None)
        return finish_loading(cls(**dict(checkpoint[DEEP_WIENER_KEY]), dtype=dtype), checkpoint, "DeepWiener")

    # ------------------------------------------------------------------------------------------------------------
    # analysis

    def state_space(self) -> list:
        """Each block's LTI part as a :class:`ssmkit.analysis.StateSpace` bank with ``dt`` = Ts seconds (time-varying
        blocks have none: the list is empty for them)."""
        from ssmkit.analysis.statespace import StateSpace

        out = []
        for layer in self.layers:
            if not layer.supports("state_space"):
                continue
            ss = layer.state_space()
            out.append(StateSpace(ss.A, ss.B, ss.C, ss.D, dt=self.dt))
        return out

    def spectral_radius(self) -> float:
        """The largest pole magnitude over every LTI block (< 1: every block Schur stable; nan without LTI blocks, and
        for a block whose state matrix holds a NaN or inf: parameters that diverged have no poles, and
        :meth:`is_stable` is then False, where the poles' LAPACK call raised)."""
        import numpy as np

        systems = self.state_space()
        if any(not np.isfinite(ss.A).all() for ss in systems):
            return math.nan
        return max((float(np.abs(ss.poles()).max()) for ss in systems), default=math.nan)

    def is_stable(self) -> bool:
        """Whether every block is LTI and Schur stable, hence the model δISS (module docstring; False for a model
        with time-varying blocks: no certificate)."""
        return self.lti and self.spectral_radius() < 1.0


def _check_pair(pair) -> tuple[float | None, float | None] | None:
    """One (lo, hi) of floats or None with lo < hi, or None when ``pair`` is not such a pair."""
    ok = isinstance(pair, (tuple, list)) and len(pair) == 2
    ok = ok and all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
                    for v in pair)
    if ok and None not in pair:
        ok = pair[0] < pair[1]
    return tuple(None if v is None else float(v) for v in pair) if ok else None


def _check_range(output_range, n_outputs: int):
    """``output_range`` as one pair (lo, hi) of floats or None, or a tuple of ``n_outputs`` such pairs (None for an
    output without a limit), or None; a ValueError naming the expected shape otherwise."""
    if output_range is None:
        return None
    expected = (f"output_range must be None or one (lo, hi) pair for every output or n_outputs = {n_outputs} pairs, "
                "one per output (None for an output without a limit); a pair holds finite numbers or None (no limit on "
                "that side) with lo < hi")
    nested = isinstance(output_range, (tuple, list)) and any(isinstance(v, (tuple, list)) for v in output_range)
    if not nested:
        pair = _check_pair(output_range)
        if pair is None or pair == (None, None):
            raise ValueError(f"{expected} and at least one limit set; got {output_range!r}")
        return pair
    if len(output_range) != n_outputs:
        raise ValueError(f"{expected}; got {len(output_range)} entries: {output_range!r}")
    pairs = []
    for k, pair in enumerate(output_range):
        checked = None if pair is None else _check_pair(pair)
        if pair is not None and checked is None:
            raise ValueError(f"{expected}; got {pair!r} for output {k}")
        pairs.append(None if checked == (None, None) else checked)
    if all(p is None for p in pairs):
        raise ValueError(f"{expected} and at least one limit set (else pass None); got {output_range!r}")
    return tuple(pairs)


def _limits(output_range) -> tuple:
    """The clamp limits of a checked ``output_range``: (lo, hi) floats or None for one pair (or none); for a pair per
    output, two lists of p floats with -inf / inf where there is no limit."""
    if output_range is None or not any(isinstance(p, tuple) for p in output_range):
        return (None, None) if output_range is None else output_range
    lo = [-math.inf if p is None or p[0] is None else p[0] for p in output_range]
    hi = [math.inf if p is None or p[1] is None else p[1] for p in output_range]
    return lo, hi


def _lti_layers() -> list[str]:
    from ssmkit.layers.registry import available

    return [n for n in available() if layer_class(n).capabilities.state_space]


def _leaves(spec) -> list[TensorSpec]:
    return [spec] if isinstance(spec, TensorSpec) else [leaf for s in spec for leaf in _leaves(s)]


def _real_size(spec) -> int:
    """Real numbers in one sequence's state of this spec (complex entries count twice)."""
    total = 0
    for leaf in _leaves(spec):
        if leaf.growing is not None:
            raise ValueError("DeepWiener needs layers with a fixed-size state")
        n = math.prod(leaf.shape)
        total += 2 * n if leaf.dtype.is_complex else n
    return total


def channel_scale(x: torch.Tensor) -> torch.Tensor:
    """The std over time of x (L, m) per channel, 1 where the channel is constant up to rounding: how DeepWiener
    normalises its inputs and outputs, and the data-driven init (:mod:`ssmkit.sysid.init`) scales its channels.

    Args:
        x: (L, m) samples, time first.
    """
    std = x.std(0, correction=0)
    constant = std <= 10 * torch.finfo(x.dtype).eps * x.mean(0).abs()
    return torch.where(constant, torch.ones_like(std), std)
