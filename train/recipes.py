"""Training recipes: named presets of the training options (torch-free).

``method``
    The talk's settings (docs/method.md): one network per view, SGD lr 0.1, batch 8,
    100 epochs, x0.1 decay on a validation-loss plateau (patience 15), the weights of the
    best validation accuracy, rotation up to 20 degrees, plain cross-entropy.
``small-real``
    For small real development sets (a few hundred images): ONE network shared by all
    views (the preprocessing already puts every breast in one orientation, so the views
    pool their data); AdamW with a cosine schedule; class-balanced loss weights and an
    ordinal-aware loss; mammography augmentation (gamma, contrast, small rotation /
    scale / shift, never a left-right flip); patient-level inner validation of 20 % of the
    training women with model selection on validation linear kappa and early stopping;
    temperature scaling on the validation images; batch-norm statistics recomputed on
    128 training images before each validation (with AdamW at lr 1e-3 on a few hundred
    images the running statistics lag the weights and eval-mode outputs collapse onto one
    class: measured on INbreast, validation accuracy 0.29-0.40 before, 0.34-0.67 after).

A recipe only fills the options the command line leaves unset: ``--recipe small-real
--epochs 60`` is the recipe with 60 epochs. The ``small-real`` values were chosen on
INbreast (5-fold CV, 224 px, benchmarks/README.md): 20 epochs with weight decay 0.05 and
gamma / contrast 0.25 / 0.15 under-fitted (image accuracy 47.5 %); 45 epochs, weight decay
1e-4 and milder intensity augmentation (0.1 / 0.1) reached 55.7 % (preprocessing
mdp-1.1; 57.8 % with mdp-2, level with hand-made features + logistic regression).
"""

from __future__ import annotations

import argparse

RECIPES: dict[str, dict[str, object]] = {
    "method": {
        "network": "per-view", "arch": "density-resnet", "optimizer": "sgd", "lr": 0.1,
        "weight_decay": 1e-4, "batch_size": 8, "epochs": 100, "scheduler": "plateau",
        "lr_factor": 0.1, "lr_patience": 15, "rotation": 20.0, "scale": 0.0,
        "translate": 0.0, "gamma": 0.0, "contrast": 0.0, "loss": "ce",
        "class_weights": "none", "sampler": "random", "select": "acc", "early_stop": 0,
        "val_fraction": 0.1, "calibrate": False, "width": 16, "bn_recalibrate": 0,
    },
    "small-real": {
        "network": "shared", "arch": "density-resnet", "optimizer": "adamw", "lr": 1e-3,
        "weight_decay": 1e-4, "batch_size": 16, "epochs": 45, "scheduler": "cosine",
        "lr_factor": 0.1, "lr_patience": 15, "rotation": 10.0, "scale": 0.1,
        "translate": 0.05, "gamma": 0.1, "contrast": 0.1, "loss": "ordinal",
        "class_weights": "balanced", "sampler": "random", "select": "kappa",
        "early_stop": 15, "val_fraction": 0.2, "calibrate": True, "width": 8,
        "bn_recalibrate": 128,
    },
}
DEFAULT_RECIPE = "method"


def apply_recipe(args: argparse.Namespace) -> argparse.Namespace:
    """Fill every recipe option left ``None`` from ``RECIPES[args.recipe]`` (in place)."""
    name = getattr(args, "recipe", None) or DEFAULT_RECIPE
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    args.recipe = name
    for key, value in RECIPES[name].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args
