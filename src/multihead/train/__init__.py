"""Training: one plain loop, per-task recipes, optimisers and schedules, checkpoints, DDP.

Example:
    >>> from multihead.train import TrainConfig, get_recipe, train
    >>> recipe = get_recipe("copy", d_model=32, layers=1)
    >>> model = recipe.build_model(seed=0)
    >>> config = TrainConfig(steps=2, batch_size=8, progress=False, device="cpu")
    >>> train(model, recipe, config).step
    2
"""

from multihead.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from multihead.train.distributed import DistInfo, init_distributed
from multihead.train.loop import Recipe, StepOutput, TrainConfig, TrainResult, read_metrics, train
from multihead.train.optim import (
    cosine_factor,
    inverse_sqrt_factor,
    make_optimizer,
    make_scheduler,
    param_groups,
)
from multihead.train.recipes import (
    RECIPE_DEFAULTS,
    TrainedModel,
    get_recipe,
    load_trained,
    translate_texts,
)

__all__ = [
    "RECIPE_DEFAULTS",
    "CheckpointError",
    "DistInfo",
    "Recipe",
    "StepOutput",
    "TrainConfig",
    "TrainResult",
    "TrainedModel",
    "cosine_factor",
    "get_recipe",
    "init_distributed",
    "inverse_sqrt_factor",
    "load_checkpoint",
    "load_trained",
    "make_optimizer",
    "make_scheduler",
    "param_groups",
    "read_metrics",
    "save_checkpoint",
    "train",
    "translate_texts",
]
