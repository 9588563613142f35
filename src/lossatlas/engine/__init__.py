"""The evaluation engine: one batch loop, one evaluator, the BatchNorm policies, losses and subsets.

* :mod:`.batches`   ``sum_over_batches``: every sum over a split (metrics, HVPs, gradients, BN statistics);
* :mod:`.evaluate`  :class:`Evaluator`, :class:`EvalSpec`: metrics at many parameter points;
* :mod:`.bn`        :class:`BNPolicy`, whole-split BatchNorm statistics;
* :mod:`.losses`    per-sample losses and their contract;
* :mod:`.subset`    one fixed stratified subset and the standard error of its mean;
* :mod:`.passes`    memory and layout decisions of a forward pass.
"""

from __future__ import annotations

from lossatlas.engine.batches import batch_slices, sum_over_batches
from lossatlas.engine.bn import BNPolicy, recompute_statistics
from lossatlas.engine.evaluate import SPLITS, EvalSpec, Evaluator
from lossatlas.engine.losses import BUILTIN_LOSSES, LossFn, check_per_sample, resolve_loss

__all__ = ["BUILTIN_LOSSES", "SPLITS", "BNPolicy", "EvalSpec", "Evaluator", "LossFn", "batch_slices",
           "check_per_sample", "recompute_statistics", "resolve_loss", "sum_over_batches"]
