"""fit's plug-ins: validation, early stopping, best-weights restore and checkpointing as callbacks.

Each is a small object with some of the `companion.train.Callback` hooks; `fit`'s keywords (`val`,
`early_stop`, `restore_best`, `checkpoint`, ...) build them, or they can be passed in `callbacks=[...]`. Their
`order` attribute places them around the other callbacks, whatever the list's order: `Validate` first (its
val_* entries are in the row every callback sees), `EarlyStopping` and `RestoreBest` after the callbacks (a
callback may add the monitored entry), `Checkpointer` last (a checkpoint holds every callback's update).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from . import checks, distributed
from .checkpoints import check_fingerprint, resume_from, rng_state, save_checkpoint, set_rng_state
from .evaluation import LossFn, evaluate
from .loop import FitState, History

_MODES = ("min", "max")


def infer_mode(monitor: str, mode: str | None = None) -> str:
    """`mode` when given ("min" or "max"); else "max" if "acc" is in `monitor`, "min" otherwise (fit's old rule)."""
    if mode is None:
        return "max" if "acc" in monitor else "min"
    if mode not in _MODES:
        raise ValueError(f"mode must be None, 'min' or 'max', got {mode!r}")
    return mode


class Validate:
    """Adds `evaluate(model, val, loss_fns)` to each epoch's row as val_* entries.

    What `fit(val=...)` builds: val_loss, val_acc and their per-task entries (val_loss/<task>, ...), computed in
    eval mode without gradients at the end of every epoch, before the other callbacks see the row.
    """

    order = -10

    def __init__(
        self, val: Iterable, loss_fns: LossFn | dict[str, LossFn] | None = None, precision: str = "fp32"
    ):
        self.val, self.loss_fns, self.precision = val, loss_fns, precision

    def on_epoch_end(self, state: FitState) -> None:
        scores = evaluate(state.model, self.val, self.loss_fns, device=state.device, precision=self.precision)
        state.row.update({f"val_{k}": v for k, v in scores.items()})


class EvaluateEvery:
    """Evaluates on `val` every `steps` optimiser steps, mid-epoch included: a convergence curve.

    Its rows, {"epoch": k (the k-th evaluation), "step", "val_loss", "val_acc", ...}, are in `rows` and in
    `history()`. The evaluation runs in eval mode without gradients, and every module's train/eval flag is put back
    afterwards, so training continues exactly as it would without the plug-in. A checkpoint saves the rows.
    """

    order = -10

    def __init__(
        self,
        val: Iterable,
        steps: int,
        loss_fns: LossFn | dict[str, LossFn] | None = None,
        precision: str = "fp32",
    ):
        self.steps = checks.integer("steps", steps, 1)
        self.val, self.loss_fns, self.precision = val, loss_fns, precision
        self.rows: list[dict] = []

    def on_step_end(self, state: FitState) -> None:
        if state.step % self.steps:
            return
        flags = [(m, m.training) for m in state.model.modules()]
        scores = evaluate(state.model, self.val, self.loss_fns, device=state.device, precision=self.precision)
        for module, training in flags:
            module.training = training
        self.rows.append(
            {"epoch": len(self.rows) + 1, "step": state.step, **{f"val_{k}": v for k, v in scores.items()}}
        )

    def history(self) -> History:
        return History(self.rows)

    def state_dict(self) -> dict:
        return {"rows": self.rows}

    def load_state_dict(self, state: dict) -> None:
        self.rows = list(state["rows"])


class _Best:
    """The best value of one history-row entry so far, by `mode` ("min" or "max"; None: `infer_mode`)."""

    order = 20

    def __init__(self, monitor: str = "val_loss", mode: str | None = None):
        if not isinstance(monitor, str):
            raise ValueError(f"monitor must be the name of a history-row entry, got {monitor!r}")
        self.monitor, self.mode, self.best = monitor, infer_mode(monitor, mode), None

    def improved(self, row: dict) -> bool:
        """Whether `row[monitor]` beats the best so far (the first value always does); updates the best."""
        if self.monitor not in row:
            raise ValueError(f"monitor={self.monitor!r} is not in the history row; available: {sorted(row)}")
        value = row[self.monitor]
        better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        if better:
            self.best = value
        return better


class EarlyStopping(_Best):
    """Stops training after `patience` epochs in a row without a better `monitor` value.

    `mode="min"` (a loss) or `"max"` (an accuracy); when not given it is inferred as fit always did: "max" if
    "acc" is in the monitor's name, else "min". What `fit(early_stop=patience, monitor=..., mode=...)` builds.
    """

    def __init__(self, patience: int, monitor: str = "val_loss", mode: str | None = None):
        if not isinstance(patience, int) or isinstance(patience, bool) or patience < 1:
            raise ValueError(f"patience must be a positive integer, got {patience!r}")
        super().__init__(monitor, mode)
        self.patience, self.bad_epochs = patience, 0

    def on_epoch_end(self, state: FitState) -> None:
        self.bad_epochs = 0 if self.improved(state.row) else self.bad_epochs + 1
        if self.bad_epochs >= self.patience:
            state.stop = True

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]


class RestoreBest(_Best):
    """Ends training on the weights of the epoch with the best `monitor` value.

    A copy of the model's state is kept at every improvement and loaded at on_fit_end (so callbacks still see
    the last epoch's weights at their own on_fit_end). `mode` as in `EarlyStopping`. The copy is saved in
    checkpoints, so a resumed run restores the best epoch even when it came before the interruption. What
    `fit(restore_best=True, monitor=..., mode=...)` builds.
    """

    def __init__(self, monitor: str = "val_loss", mode: str | None = None):
        super().__init__(monitor, mode)
        self.weights: dict | None = None

    def on_epoch_end(self, state: FitState) -> None:
        if self.improved(state.row):
            self.weights = {k: v.detach().clone() for k, v in state.model.state_dict().items()}

    def on_fit_end(self, state: FitState) -> None:
        if self.weights is not None:
            state.model.load_state_dict(self.weights)

    def state_dict(self) -> dict:
        return {"best": self.best, "weights": self.weights}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.weights = state["best"], state["weights"]


class Checkpointer:
    """Writes fit's full training state to `path` and resumes from it, so a killed run ends on the same weights
    .

     Written atomically (temp file, fsync, rename; the previous file kept as `<name>.prev`) at every epoch end and,
     with `every`, after every `every`-th optimiser step: model, optimiser, scheduler, GradScaler, balancer, each
     callback's `state_dict()`, the random states (each rank's under torchrun), the position (epoch, step, batch
     in epoch), the epoch's running sums, the history and the run's fingerprint. At `setup` an existing file is
     resumed from (a checkpoint of another run, by seed, lr, epochs, precision, steps per epoch, process count,
     optimiser class and hyperparameters, scheduler, clipping or parameter names and shapes, is refused with its
     path and the first differing field: `checkpoints.run_fingerprint`); a corrupt one stops with its path, or with `resume="latest-good"` its `.prev` is used. Under
     torchrun rank 0 writes and the others wait. What `fit(checkpoint=path, checkpoint_every=every,
     resume=resume)` builds.
    """

    order = 30

    def __init__(self, path: str | Path, every: int | None = None, resume: str = "latest"):
        if every is not None and (not isinstance(every, int) or isinstance(every, bool) or every < 1):
            raise ValueError(f"every must be None or a positive integer, got {every!r}")
        if resume not in ("latest", "latest-good"):
            raise ValueError(f"resume must be 'latest' or 'latest-good', got {resume!r}")
        self.path, self.every, self.resume = Path(path), every, resume

    def setup(self, state: FitState) -> None:
        saved = resume_from(self.path, self.resume, state.device)
        if saved is None:
            return
        world = distributed.world()
        check_fingerprint(
            self.path,
            saved.get("fingerprint", {}),
            {**state.fingerprint, "world_size": world},
            {"world_size": 1},
        )
        try:
            state.model.load_state_dict(saved["model"])
            state.optimizer.load_state_dict(saved["optimizer"])
        except (RuntimeError, KeyError, ValueError) as err:
            first = " ".join(str(err).split())[:400] or type(err).__name__  # torch's message, on one line
            raise ValueError(
                f"checkpoint {self.path} does not fit this run's model or optimizer ({type(err).__name__}: "
                f"{first}); resume with the same model and optimizer, or pass another checkpoint path"
            ) from None
        for obj, key in (
            (state.scheduler, "scheduler"),
            (state.scaler, "scaler"),
            (state.balancer, "balancer"),
        ):
            if obj is not None and hasattr(obj, "load_state_dict") and saved.get(key) is not None:
                obj.load_state_dict(saved[key])
        states, names = saved.get("callbacks") or [], saved.get("callback_names")
        by_name = (
            dict(zip(names, states)) if names is not None else dict(zip(_names(state.callbacks), states))
        )
        for cb, name in zip(
            state.callbacks, _names(state.callbacks)
        ):  # files without names: matched by place
            if by_name.get(name) is not None and hasattr(cb, "load_state_dict"):
                cb.load_state_dict(by_name[name])
        state.history = History(saved["history"])
        state.epoch, state.step, state.skip = saved["epoch"], saved["step"], saved["batch_in_epoch"]
        own = (
            saved["ranks"][distributed.rank()] if world > 1 else saved
        )  # each rank's random state, running sums
        running = own.get("running", {})
        state.sums, state.counts = dict(running.get("sums", {})), dict(running.get("counts", {}))
        set_rng_state(own["rng"])

    def on_step_end(self, state: FitState) -> None:
        if self.every and state.step % self.every == 0:
            self.save(state, state.epoch, state.batch + 1, {"sums": state.sums, "counts": state.counts})

    def on_epoch_end(self, state: FitState) -> None:
        self.save(state, state.epoch + 1, 0, {})

    def save(self, state: FitState, epoch: int, batch_in_epoch: int, running: dict) -> None:
        """Write the state at a position: `epoch` and `batch_in_epoch` are where a resumed run starts."""
        ranks = (
            distributed.gather({"rng": rng_state(), "running": running}) if distributed.world() > 1 else None
        )
        if not distributed.is_main():
            distributed.barrier()  # rank 0 writes the checkpoint alone; the others wait for it here
            return
        save_checkpoint(
            self.path,
            {
                "model": state.model.state_dict(),
                "optimizer": state.optimizer.state_dict(),
                "scheduler": state.scheduler.state_dict() if state.scheduler is not None else None,
                "scaler": state.scaler.state_dict() if state.scaler is not None else None,
                "balancer": state.balancer.state_dict() if hasattr(state.balancer, "state_dict") else None,
                "callbacks": [
                    cb.state_dict() if hasattr(cb, "state_dict") else None for cb in state.callbacks
                ],
                "callback_names": _names(state.callbacks),
                "rng": rng_state(),
                "epoch": epoch,
                "step": state.step,
                "batch_in_epoch": batch_in_epoch,
                "running": running,
                "history": list(state.history),
                "fingerprint": state.fingerprint,
                **({"ranks": ranks} if ranks is not None else {}),
            },
        )
        distributed.barrier()


def _names(callbacks: list) -> list[str]:
    """A name per callback, its class's and the how-many-th of that class ("Script#0"): a callback's state
    finds it on resume even when plug-ins were added or dropped around it."""
    seen: dict[str, int] = {}
    out = []
    for cb in callbacks:
        kind = type(cb).__name__
        out.append(f"{kind}#{seen.get(kind, 0)}")
        seen[kind] = seen.get(kind, 0) + 1
    return out
