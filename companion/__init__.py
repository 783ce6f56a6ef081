"""companion: the tested training utilities behind the course "Transfer Learning vs Multi-task Learning"."""

from .claims import Claims
from .course import COURSE
from .device import env_report, pick_device, seed_everything
from .params import ParameterError, setup
from .train import (
    Balancer,
    CheckpointError,
    History,
    StepContext,
    WeightedSum,
    accuracy,
    default_loss,
    evaluate,
    fit,
    load_checkpoint,
    save_checkpoint,
)

__all__ = [
    "COURSE",
    "Balancer",
    "CheckpointError",
    "Claims",
    "History",
    "ParameterError",
    "StepContext",
    "WeightedSum",
    "accuracy",
    "default_loss",
    "env_report",
    "evaluate",
    "fit",
    "load_checkpoint",
    "pick_device",
    "save_checkpoint",
    "seed_everything",
    "setup",
]
