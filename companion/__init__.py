"""companion: the tested training utilities behind the course "Transfer Learning vs Multi-task Learning".

Modules by concern:
- foundations: device (device choice, seeds), checks (input checks, one message style), files (atomic writes);
- data: store (the data folder, checksums, fetching), data (datasets, multi-task sets, the text set), text
  (sentence embeddings from an offline pretrained encoder), batches (TensorBatches, loaders, splits), synthetic;
- training: models, train (fit), loop (fit's step and loops, the Balancer and Callback contracts), evaluation
  (losses, accuracy, evaluate), plugins (checkpointing, early stopping, validation, evaluation every N steps),
  optim (optimisers and schedules by name), checkpoints, distributed (fit under torchrun);
- transfer: transfer (strategies, freezing, L2-SP), sources (cached source models), dann, strategies, mismatch,
  transferability;
- multi-task: mtl (architectures), balancers (loss and gradient balancing), aggregators, objectives, weighting,
  auxiliary, affinity (which tasks to train together);
- experiments: experiments (sweeps and comparisons), regimes, sweeps (the decision map's sweep), advice (the
  decision map, advise), protocol (fair comparisons, Delta_m), claims;
- the course: params, course (the notebook runner), editions (student and instructor editions), provenance (the
  infographic's numbers and their results files), infographic, plots.

The most used names are re-exported here.
"""

from .advice import Recommendation, advise
from .affinity import AffinityMeter, grouping_score, rank_splits, two_group_splits
from .aggregators import METHODS as AGGREGATION_METHODS
from .aggregators import aggregate, conflict, cosine_matrix, task_gradients
from .claims import Claims
from .course import COURSE
from .data import (
    TensorBatches,
    available_datasets,
    data_root,
    fashion_groups,
    fetch,
    load_dataset,
    load_texts,
    loader,
    multi_digits,
    subsample_per_class,
)
from .device import env_report, pick_device, seed_everything
from .editions import exercises, write_student
from .mismatch import (
    ADAPTATIONS,
    by_cell,
    corrupt_labels,
    domain_adaptation,
    negative_transfer_gap,
    noisy_source,
    target_sweep,
)
from .models import backbone, count_params, efficientnet_lite0, extract_features, features, new_head, stages
from .mtl import (
    DWA,
    FAMO,
    CrossStitch,
    GradAggregation,
    GradNorm,
    HardSharing,
    L2Tied,
    MMoE,
    Uncertainty,
    Weighted,
    param_count,
    task_affinity,
)
from .objectives import aggregate2, distance_to_set, pareto_set, path_summary, toy_losses, toy_paths
from .params import ParameterError, setup
from .plugins import Checkpointer, EarlyStopping, EvaluateEvery, RestoreBest, Validate
from .protocol import delta_m, over_seeds, tune
from .regimes import (
    Monitor,
    StepStream,
    adapt_task,
    from_multitask,
    head_accuracy,
    to_multitask,
    train_multitask,
    train_task,
)
from .strategies import base_network, copy_stages, random_network, summarize, tuned_strategies
from .synthetic import make_multilabel, make_scenes, make_shapes, make_tasks, shift
from .text import embed_texts, load_encoder
from .train import (
    Balancer,
    CheckpointError,
    History,
    StepContext,
    WeightedSum,
    evaluate,
    fit,
    load_checkpoint,
    save_checkpoint,
)
from .transfer import (
    GradualUnfreezing,
    adapt,
    block_sweep,
    forgetting,
    l2sp,
    label_efficiency,
    lp_ft,
    prepare,
    source_model,
    transfer_blocks,
)
from .transferability import h_score, leep, logme, nce, rank_sources, score_sources, transrate
from .weighting import GradNormFloor, Traced, UncertaintyLR, log_loss_score, scene_scores, tune_each

__all__ = [
    "AGGREGATION_METHODS",
    "AffinityMeter",
    "grouping_score",
    "rank_splits",
    "two_group_splits",
    "COURSE",
    "DWA",
    "FAMO",
    "Balancer",
    "CheckpointError",
    "Claims",
    "CrossStitch",
    "GradAggregation",
    "GradNorm",
    "HardSharing",
    "History",
    "L2Tied",
    "MMoE",
    "ParameterError",
    "StepContext",
    "TensorBatches",
    "Uncertainty",
    "Weighted",
    "WeightedSum",
    "aggregate",
    "available_datasets",
    "backbone",
    "conflict",
    "cosine_matrix",
    "count_params",
    "data_root",
    "efficientnet_lite0",
    "env_report",
    "evaluate",
    "extract_features",
    "fashion_groups",
    "features",
    "fetch",
    "fit",
    "h_score",
    "leep",
    "load_checkpoint",
    "load_dataset",
    "load_texts",
    "embed_texts",
    "load_encoder",
    "loader",
    "logme",
    "make_multilabel",
    "make_scenes",
    "make_shapes",
    "make_tasks",
    "multi_digits",
    "nce",
    "new_head",
    "param_count",
    "pick_device",
    "rank_sources",
    "save_checkpoint",
    "score_sources",
    "seed_everything",
    "setup",
    "shift",
    "stages",
    "subsample_per_class",
    "task_affinity",
    "task_gradients",
    "transrate",
    "adapt",
    "forgetting",
    "l2sp",
    "lp_ft",
    "prepare",
    "source_model",
    "transfer_blocks",
    "block_sweep",
    "label_efficiency",
    "Recommendation",
    "advise",
    "over_seeds",
    "tune",
    "base_network",
    "copy_stages",
    "random_network",
    "summarize",
    "tuned_strategies",
    "Monitor",
    "StepStream",
    "adapt_task",
    "from_multitask",
    "head_accuracy",
    "to_multitask",
    "train_multitask",
    "train_task",
    "GradNormFloor",
    "Traced",
    "UncertaintyLR",
    "log_loss_score",
    "scene_scores",
    "tune_each",
    "aggregate2",
    "distance_to_set",
    "pareto_set",
    "path_summary",
    "toy_losses",
    "toy_paths",
    "by_cell",
    "corrupt_labels",
    "negative_transfer_gap",
    "noisy_source",
    "target_sweep",
    "exercises",
    "write_student",
    "ADAPTATIONS",
    "domain_adaptation",
    "Checkpointer",
    "EarlyStopping",
    "EvaluateEvery",
    "RestoreBest",
    "Validate",
    "delta_m",
    "GradualUnfreezing",
]
