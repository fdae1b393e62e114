"""The Lightning side of training: a LightningModule around :class:`ssmkit.models.SequenceModel` and a data module
whose training batches are a function of the step (:mod:`ssmkit.train.batches`).

The optimiser is the papers' (arXiv 2111.00396 App. D; arXiv 2206.11893): AdamW over :func:`ssmkit.train.param_groups`
(SSM parameters at their own learning rate, no weight decay on them, norms or biases) with a per-step warm-up +
cosine schedule (:mod:`ssmkit.train.schedule`). A non-finite training loss stops the run with
:class:`NonFiniteLossError` naming the step, before anything is written, so the last checkpoint stays the last good one.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import lightning.pytorch as pl
import numpy as np
import torch

from ssmkit.models import SequenceModel, SequenceModelConfig
from ssmkit.train.batches import EvalBatches, StepBatches, eval_batches, unpack_batch  # noqa: F401 (re-exported)
from ssmkit.train.config import TrainConfig
from ssmkit.train.objective import METRIC_NAMES, scored_count, summed_loss_and_metric
from ssmkit.train.optim import param_groups
from ssmkit.train.schedule import warmup_cosine


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the step and the last good checkpoint."""


class SequenceLightningModule(pl.LightningModule):
    """Trains a :class:`SequenceModel` for its head's objective (:mod:`ssmkit.train.objective`).

    Args:
        model: the model configuration (a :class:`SequenceModelConfig` or its dict).
        train: the training configuration (a :class:`TrainConfig` or its dict).

    Both are saved as plain dicts in every checkpoint (``hyper_parameters``), so a checkpoint rebuilds its model. The
    model is float32, or float64 for ``train.precision == "64"``.

    Each training step logs ``train_loss`` and ``train_<metric>`` of the global batch: with several processes, the
    loss and metric sums of every process over their summed count of scored items (a mean weighted by each process's
    share, which may differ: masked tokens), so the numbers do not depend on the number of processes.

    A test logs ``<split>_loss<suffix>`` and ``<split>_<metric><suffix>`` for ``test_names = (split, suffix)``,
    ``("test", "")`` by default (``test_loss``, ``test_accuracy``); :func:`ssmkit.train.fit` names each evaluation
    as its result record does (``("test", "_final")``, ``("test@1024", "_best_val")``), so every row of
    ``metrics.csv`` says which weights and split it scored.
    """

    def __init__(self, model: SequenceModelConfig | dict, train: TrainConfig | dict) -> None:
        super().__init__()
        model_cfg = model if isinstance(model, SequenceModelConfig) else SequenceModelConfig.from_dict(dict(model))
        train_cfg = train if isinstance(train, TrainConfig) else TrainConfig.from_dict(dict(train))
        self.save_hyperparameters({"model": model_cfg.to_dict(), "train": train_cfg.to_dict()})
        self.model_config = model_cfg
        self.train_config = train_cfg
        self.model = SequenceModel.from_config(model_cfg)
        self.model.activation_checkpointing = train_cfg.activation_checkpointing
        if train_cfg.precision == "64":
            # float64 from the start, as Lightning's "64-true" converts it: Lightning loads a checkpoint's weights into
            # the module as built (``fit(ckpt_path=...)`` before converting it, ``load_from_checkpoint``), so a float32
            # module rounded them (a resumed float64 run 2e-7 from the uninterrupted one)
            self.model.double()
        self.head = model_cfg.head
        self.checkpoint_dir: str | None = None
        self.test_names: tuple[str, str] = ("test", "")  # (split, suffix) of the logged test metrics' names
        self._sums: dict[str, list[torch.Tensor]] = {}
        self._rng_restored = False  # this process's own generator states came from a checkpoint
        self._rng_step = 0  # the step a process r > 0 derives its seed at (a checkpoint without per-process states)

    def forward(self, x: torch.Tensor, intervals: torch.Tensor | None = None,
                lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(x, return_state=False, intervals=intervals, lengths=lengths)[0]

    def training_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y, intervals, lengths = unpack_batch(batch)
        if self.train_config.micro_batches == 1:
            loss_sum, metric_sum, count = summed_loss_and_metric(self.head, self(x, intervals, lengths), y, lengths)
            loss = loss_sum / count.clamp_min(1.0)
            finite = torch.isfinite(loss)
        else:
            loss, loss_sum, metric_sum, count, finite = self._micro_batches(x, y, intervals, lengths)
        # One all-reduce per step, as before. The processes decide together whether to stop (one that stopped alone
        # left the others in the gradient all-reduce: over gloo they failed with "Connection closed by peer", the
        # cause only in the stopped rank's log; NCCL waits for its timeout), and the same call sums their losses,
        # metrics and counts: the logged means are the global batch's (process 0's own share was logged before).
        # Lightning's sync_dist=True would add an all-reduce per name and step, of the unweighted mean of the means.
        parts = torch.stack([finite.to(loss_sum.dtype), loss_sum.detach(), metric_sum.detach().to(loss_sum.dtype),
                             count.to(loss_sum.dtype)])
        all_finite, global_loss, global_metric, global_count = self.trainer.strategy.reduce(parts, reduce_op="sum")
        if int(all_finite) != self.trainer.world_size:
            where = f"; the last good checkpoint is in {self.checkpoint_dir}" if self.checkpoint_dir else ""
            which = (f"is {float(loss.detach())}" if not bool(finite) else
                     f"of another process is not finite (this process's: {float(loss.detach()):.6g})")
            raise NonFiniteLossError(
                f"the training loss {which} at step {self.global_step} (batch {batch_idx}); training "
                f"stopped before the update{where}. Lower the learning rate or clip gradients (grad_clip)."
            )
        global_count = global_count.clamp_min(1.0)
        self.log("train_loss", global_loss / global_count, prog_bar=True, on_step=True, on_epoch=False)
        self.log(f"train_{METRIC_NAMES[self.head]}", global_metric / global_count, on_step=True, on_epoch=False)
        return loss

    def _micro_batches(
        self, x: torch.Tensor, y: torch.Tensor, intervals: torch.Tensor | None = None,
        lengths: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """The step's batch in ``micro_batches`` parts (gradient accumulation): (loss, loss sum, metric sum, count,
        all finite) of the whole batch.

        Part i's loss is its loss sum over the whole batch's count, loss_i = Σ_{part i} ℓ / n, so the parts' gradients
        add up to the gradient of the batch's mean loss Σ ℓ / n, also where the parts score different numbers of items
        (a language model's ignored targets: a mean of the parts' means would weigh them wrongly). Every part but the
        last is back-propagated here, through the strategy (the mixed-precision loss scale applies); their gradients
        stay in ``.grad``, to which Lightning adds the last part's from the returned loss. Under DDP the reducer ignores
        gradient hooks until its module's forward returns, so the parts here are not all-reduced and the last backward
        all-reduces the accumulated gradients once. The returned loss carries the last part's graph and the value of
        the whole batch's loss."""
        self.zero_grad()  # this step's gradients start here (see optimizer_zero_grad)
        total = scored_count(self.head, y, lengths).clamp_min(1.0)
        n = self.train_config.micro_batches
        interval_parts = [None] * n if intervals is None else torch.tensor_split(intervals, n)
        length_parts = [None] * n if lengths is None else torch.tensor_split(lengths, n)
        parts = list(zip(torch.tensor_split(x, n), torch.tensor_split(y, n), interval_parts, length_parts))
        done, loss_sum, metric_sum, count, finite = None, 0.0, 0.0, 0.0, True
        for i, (x_i, y_i, intervals_i, lengths_i) in enumerate(parts):
            part_loss, part_metric, part_count = summed_loss_and_metric(self.head, self(x_i, intervals_i, lengths_i),
                                                                        y_i, lengths_i)
            loss_i = part_loss / total.to(part_loss.dtype)
            finite = finite & torch.isfinite(loss_i)
            loss_sum, metric_sum, count = loss_sum + part_loss.detach(), metric_sum + part_metric, count + part_count
            if i < len(parts) - 1:
                self.trainer.strategy.backward(loss_i, None)  # into .grad; the update comes after the last part
                done = loss_i.detach() if done is None else done + loss_i.detach()
            else:
                loss = loss_i if done is None else loss_i + done  # the last part's graph, the whole batch's value
        return loss, loss_sum, metric_sum, count, finite

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer) -> None:
        """Lightning zeroes the gradients between ``training_step`` and the backward of the loss it returns: with
        ``micro_batches`` the parts back-propagated inside the step would be lost, so ``training_step`` zeroes them
        before its first part instead."""
        if self.train_config.micro_batches == 1:
            optimizer.zero_grad()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # metrics.csv's step is Lightning's count of batches that stepped, which equals the global step before every
        # batch of a run that is not resumed; a run resumed from a checkpoint written after its fit had ended (at a
        # step off the checkpoint period: an early stop, a time limit) counted one more, so every later row was one
        # step late. Set, not trusted (with one optimizer both count optimizer steps)
        self.trainer.fit_loop.epoch_loop._batches_that_stepped = self.global_step

    def _accumulate(self, stage: str, batch: Sequence[torch.Tensor]) -> None:
        x, y, intervals, lengths = unpack_batch(batch)
        parts = summed_loss_and_metric(self.head, self(x, intervals, lengths), y, lengths)
        sums = self._sums.setdefault(stage, [torch.zeros((), device=self.device) for _ in range(3)])
        for i, part in enumerate(parts):
            sums[i] = sums[i] + part.detach().to(sums[i].device)

    def _reduced(self, stage: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(mean loss, mean metric) of a stage's sums over every batch and process, or None if it saw no batch."""
        sums = self._sums.pop(stage, None)
        if sums is None:
            return None
        loss_sum, metric_sum, count = (self.trainer.strategy.reduce(s, reduce_op="sum") for s in sums)
        count = count.clamp_min(1.0)
        return loss_sum / count, metric_sum / count

    def _log_stage(self, stage: str) -> None:
        means = self._reduced(stage)
        if means is None:
            return
        name, suffix = self.test_names if stage == "test" else (stage, "")
        self.log(f"{name}_loss{suffix}", means[0], prog_bar=stage == "val", sync_dist=False)
        self.log(f"{name}_{METRIC_NAMES[self.head]}{suffix}", means[1], prog_bar=stage == "val", sync_dist=False)

    def score(self, batches: Iterable[Sequence[torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The current weights' ``{"loss": ..., "<metric>": ...}`` over ``batches`` (this process's share; summed
        over processes), computed as a validation epoch computes them (eval mode, no gradients, the precision
        plugin's input conversion and context) but logged nowhere.

        Args:
            batches: evaluation batches of (inputs, targets), e.g. the data module's ``val_dataloader()``.

        Returns:
            the mean loss and metric as scalar tensors, equal to the ``val_*`` values a validation would log.
        """
        trainer, was_training = self.trainer, self.training
        self.eval()
        try:
            with torch.no_grad():
                for batch in batches:
                    batch = trainer.strategy.batch_to_device(trainer.precision_plugin.convert_input(batch))
                    with trainer.precision_plugin.val_step_context():
                        self._accumulate("score", batch)
            means = self._reduced("score")
        finally:
            self._sums.pop("score", None)
            self.train(was_training)
        if means is None:
            raise ValueError("score needs at least one batch")
        return {"loss": means[0], METRIC_NAMES[self.head]: means[1]}

    def validation_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> None:
        self._accumulate("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._log_stage("val")

    def test_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> None:
        self._accumulate("test", batch)

    def on_test_epoch_end(self) -> None:
        self._log_stage("test")

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.train_config
        optimizer = torch.optim.AdamW(param_groups(self.model, lr=cfg.lr, weight_decay=cfg.weight_decay))
        scheduler = warmup_cosine(optimizer, cfg.warmup_steps, cfg.max_steps, cfg.lr_floor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_fit_start(self) -> None:
        # Each data-parallel process draws its own dropout masks. seed_everything gave every process the same seed (the
        # same initial weights, which DDP broadcasts anyway), so process r > 0 reseeds from (seed, r) unless a
        # checkpoint restored its own states. Process 0 keeps its stream: one process trains as it did before.
        rank = self.trainer.global_rank
        if self.trainer.world_size > 1 and rank > 0 and not self._rng_restored:
            torch.manual_seed(process_seed(self.train_config.seed, rank, self._rng_step))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # dropout masks continue exactly after a resume: they come from the generator of the device the model is on
        # (the CUDA generator was not saved, so a resumed GPU run drew other masks; probe 17); with several processes,
        # every process's generators (this hook runs in each: Lightning's save_checkpoint is collective)
        cuda = self.device.type == "cuda"
        checkpoint["ssmkit_rng"] = torch.get_rng_state()
        if cuda:
            checkpoint["ssmkit_rng_cuda"] = torch.cuda.get_rng_state(self.device)
        if self._trainer is not None and self.trainer.world_size > 1:
            checkpoint["ssmkit_rng_ranks"] = self._gathered(torch.get_rng_state())
            if cuda:
                checkpoint["ssmkit_rng_cuda_ranks"] = self._gathered(torch.cuda.get_rng_state(self.device))

    def _gathered(self, state: torch.Tensor) -> torch.Tensor:
        """Every process's ``state`` (a generator's byte state), stacked by rank on the CPU: (world size, bytes).
        torch.distributed's own all_gather (Lightning's goes through a deprecated one that warns at every checkpoint),
        on the module's device (NCCL gathers CUDA tensors only)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return state[None]
        local = state.to(self.device)
        rows = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(rows, local)
        return torch.stack(rows).cpu()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainer = self._trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        # Lightning restores before moving the module to its device: the strategy's device is where it will train
        device = trainer.strategy.root_device if trainer is not None else self.device
        ranks, cuda_ranks = checkpoint.get("ssmkit_rng_ranks"), checkpoint.get("ssmkit_rng_cuda_ranks")
        if ranks is not None and len(ranks) == world:
            # a copy: torch 2.13's set_rng_state reads a row view (storage offset > 0) out of bounds and crashes
            torch.set_rng_state(ranks[rank].clone())
            if cuda_ranks is not None and device.type == "cuda":
                torch.cuda.set_rng_state(cuda_ranks[rank].clone(), device)
            self._rng_restored = True
            return
        # one process, or a checkpoint of another number of processes: process 0's states (and process r > 0 derives
        # its seed from the step, in on_fit_start)
        if "ssmkit_rng" in checkpoint:
            torch.set_rng_state(checkpoint["ssmkit_rng"])
        if "ssmkit_rng_cuda" in checkpoint and device.type == "cuda":
            torch.cuda.set_rng_state(checkpoint["ssmkit_rng_cuda"], device)
        self._rng_step = int(checkpoint.get("global_step", 0))


def process_seed(seed: int, rank: int, step: int = 0) -> int:
    """The generator seed of data-parallel process ``rank`` > 0 of a run seeded ``seed``, starting at ``step``: a
    64-bit hash of the three (numpy's SeedSequence), distinct per process and step."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1, dtype=np.uint64)[0])


class TensorDataModule(pl.LightningDataModule):
    """Training, validation and test tensors served as step-indexed batches (:class:`StepBatches`).

    Args:
        train: (inputs, targets) tensors of the training split, or a form with intervals and / or lengths
            (:func:`ssmkit.train.batches.unpack_batch`).
        val: the validation split, or None.
        test: the test split, or None.
        batch_size: samples per process and step.
        eval_batch_size: samples per evaluation batch.
        seed: the batch-order seed.
        transform: applied to every batch (e.g. stored integer pixels to scaled floats), or None.
    """

    def __init__(
        self,
        train: Sequence[torch.Tensor],
        val: Sequence[torch.Tensor] | None,
        test: Sequence[torch.Tensor] | None,
        batch_size: int,
        eval_batch_size: int,
        seed: int,
        transform: Callable[[tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]] | None = None,
    ) -> None:
        super().__init__()
        self.transform = transform
        self.train_split, self.val_split, self.test_split = train, val, test
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed

    def train_dataloader(self) -> StepBatches:
        trainer = self.trainer
        return StepBatches(self.train_split, self.batch_size, seed=self.seed, start_step=trainer.global_step,
                           rank=trainer.global_rank, world_size=trainer.world_size, transform=self.transform)

    def val_dataloader(self) -> EvalBatches:
        if self.val_split is None:
            return EvalBatches([])
        return eval_batches(self.val_split, self.eval_batch_size, self.trainer.global_rank, self.trainer.world_size,
                            self.transform)

    def test_dataloader(self) -> EvalBatches:
        if self.test_split is None:
            return EvalBatches([])
        return eval_batches(self.test_split, self.eval_batch_size, self.trainer.global_rank, self.trainer.world_size,
                            self.transform)
