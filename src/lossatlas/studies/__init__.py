"""Studies: the classic results of the lecture notes as runnable, checked experiments.

Each module reads like its paper's method section: a frozen dataclass of parameters registered with
:func:`~lossatlas.studies.registry.study`, the published numbers as data, a batched ``run`` and a ``check``
that prints the expected number (with its source: published, derived, protocol or sanity) beside the measured
one, with an interval, a stated margin and a verdict (:mod:`lossatlas.studies.verdict`).

    from lossatlas.studies import run_study, study_names
    result = run_study("safran-shamir", "quick", {"runs": "200"}, seed=0, out_dir="runs/studies")
    for row in result.rows: print(row.quantity, row.key, row.expected, row.source, row.measured, row.verdict)

Built-in studies (names are the interface). Theory (Studies I): ``critical-points``, ``deep-linear``,
``single-neuron``, ``safran-shamir``, ``xor-jellyfish``, ``index-vs-error``. Empirical (Studies II):
``goodfellow``, ``mnist1d-baselines``, ``batch-size-weight-decay``, ``optimizer-switch``, ``skip-connections``,
``initialisation``, ``ccnn``, ``overparameterisation``.
"""

from __future__ import annotations

# importing a study module registers it (the order of `lossatlas study list` is registry.BUILTIN_ORDER)
from lossatlas.studies import (  # noqa: E402,F401,I001
    batch_size_weight_decay,
    ccnn,
    ccnn_depth,
    critical_points,
    deep_linear,
    goodfellow,
    index_vs_error,
    initialisation,
    mnist1d_baselines,
    mode_connectivity,
    nguyen_hein,
    optimizer_switch,
    overparameterisation,
    random_directions,
    safran_shamir,
    safran_shamir_overparam,
    single_neuron,
    skip_connections,
    swirszcz,
    width_effect,
)
from lossatlas.studies.framework import (
    Context,
    Row,
    StudyResult,
    mean_interval,
    settle,
    wilson_interval,
)
from lossatlas.studies.registry import Published, Study, StudyInfo, get_study, parse_overrides, study, study_names
from lossatlas.studies.runner import run_study

__all__ = ["Context", "Published", "Row", "Study", "StudyInfo", "StudyResult", "get_study", "mean_interval",
           "parse_overrides", "run_study", "settle", "study", "study_names", "wilson_interval"]
