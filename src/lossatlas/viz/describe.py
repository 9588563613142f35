"""What a stored result is, in words: the qualifiers a reader must not miss, and numbers printed honestly.

One place decides how the terminal summary, the static plots, ``compare`` and the HTML report say that a
result was evaluated on a *subset*, at *untrained* weights, or with BatchNorm statistics *re-estimated* at
every point — and which settings differ between stores shown side by side. Everything reads the root
attrs a store carries (:func:`lossatlas.store.provenance`), so old stores without a new attr still work.

Numbers: :func:`sig` prints 4 significant digits (a loss of ``3.49532e-05`` claims nothing the data do not
say as ``3.495e-05``); :func:`with_error` prints ``value ± half-width`` with the value rounded to the
error's two leading digits (``0.1234 ± 0.0057``), so a subset estimate never shows false precision.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any

UNTRAINED = "untrained initialisation (no --checkpoint)"
"""``attrs["weights"]`` of a result computed at a model's initial weights (no checkpoint loaded)."""

BN_RECOMPUTE_NOTE = ("--bn recompute re-estimates the BatchNorm statistics on the whole training split at every "
                     "point, so the loss at the centre differs from the training log (which used the running "
                     "statistics stored with the checkpoint)")


def sig(value: Any, digits: int = 4) -> str:
    """``value`` with ``digits`` significant digits (``nan``/``inf`` as such): ``3.49532e-05`` → ``3.495e-05``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(v):
        return str(v)
    return f"{v:.{digits}g}"


def with_error(value: Any, half_width: Any) -> str:
    """``value ± half_width`` with the value rounded to the last digit the error's two leading digits reach.

    ``with_error(0.123456, 0.0056789)`` → ``"0.1235 ± 0.0057"``; without a usable error, :func:`sig`.
    """
    v, e = float(value), float(half_width)
    if not (math.isfinite(v) and math.isfinite(e)) or e <= 0:
        return sig(v)
    decimals = 1 - math.floor(math.log10(e))  # two significant digits of the error
    if decimals <= 0:
        scale = 10.0 ** (-decimals)
        return f"{round(v / scale) * scale:.0f} ± {round(e / scale) * scale:.0f}"
    if decimals <= 4 or v == 0:
        return f"{v:.{decimals}f} ± {e:.{decimals}f}"
    # tiny errors: scientific, the value to the error's second digit
    mant = max(0, math.floor(math.log10(abs(v))) + decimals)
    return f"{v:.{mant}e} ± {e:.1e}"


def subset_note(attrs: Mapping[str, Any]) -> str | None:
    """``"a subset of 10% of each split (seed 0)"`` for a subset evaluation, else None."""
    subset = attrs.get("subset")
    if subset is None or subset == "":
        return None
    seed = attrs.get("subset_seed", "?")
    try:
        s = float(subset)
    except (TypeError, ValueError):
        return f"a subset {subset} (seed {seed})"
    if isinstance(subset, float) and s <= 1.0:
        return f"a subset of {s * 100:.3g}% of each split (seed {seed})"
    return f"a subset of {int(s)} samples of each split (seed {seed})"


def subset_tag(attrs: Mapping[str, Any]) -> str | None:
    """Short form for plot titles: ``"subset 10%"`` or ``"subset n=500"``."""
    subset = attrs.get("subset")
    if subset is None or subset == "":
        return None
    if isinstance(subset, float) and subset <= 1.0:
        return f"subset {subset * 100:.3g}%"
    return f"subset n={subset}"


def untrained(attrs: Mapping[str, Any]) -> bool:
    """Whether the result was computed at a model's untrained initial weights."""
    return str(attrs.get("weights", "")).startswith("untrained")


def has_batchnorm(attrs: Mapping[str, Any]) -> bool:
    """Whether the model behind a store has BatchNorm layers (stores written before this was recorded: assume so)."""
    return attrs.get("batchnorm_layers", 1) != 0


def qualifiers(attrs: Mapping[str, Any]) -> list[str]:
    """Short tags a plot title carries: ``["subset 10%", "untrained weights", "bn=recompute"]`` (those that apply)."""
    tags = []
    tag = subset_tag(attrs)
    if tag:
        tags.append(tag)
    if untrained(attrs):
        tags.append("untrained weights")
    if attrs.get("bn") in ("recompute", "states") and has_batchnorm(attrs):
        tags.append(f"bn={attrs['bn']}")
    return tags


def titled(title: str, attrs: Mapping[str, Any]) -> str:
    """``title`` with the store's qualifiers appended in brackets: ``"train loss [subset 10%]"``."""
    tags = qualifiers(attrs)
    return f"{title} [{', '.join(tags)}]" if tags else title


def notes(attrs: Mapping[str, Any]) -> list[str]:
    """Sentences a reader must see before trusting the numbers (untrained weights, subset, BN recompute)."""
    out = []
    if untrained(attrs):
        out.append("untrained weights: no --checkpoint was given, so this maps the model's random initialisation")
    note = subset_note(attrs)
    if note:
        out.append(f"evaluated on {note}: every value is an estimate; ± and bands are 95% intervals "
                   "(1.96 standard errors)")
    if attrs.get("bn") == "recompute" and has_batchnorm(attrs):
        out.append(BN_RECOMPUTE_NOTE)
    bad = attrs.get("nonpositive_variance_at")
    if bad:
        shown = ", ".join(f"{float(a):g}" for a in list(bad)[:4]) + (", ..." if len(bad) > 4 else "")
        out.append(f"at alpha = {shown} an interpolated BatchNorm running variance is <= 0 (extrapolated beyond "
                   "the two models), so those values are not meaningful; use --bn recompute to re-estimate the "
                   "statistics at each point")
    return out


def log_ticks(lo: float, hi: float, most: int = 8) -> tuple[list[float], list[str]]:
    """Colour-bar ticks for values plotted as log10: positions (log10 units) and labels in the values' own units.

    ``log_ticks(-4.2, 0.4)`` → ``([-4, -3, -2, -1, 0], ["0.0001", "0.001", "0.01", "0.1", "1"])``; within less than
    two decades 2× and 5× steps are added, and within less than a factor 2 the ends and the middle are used.
    """
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi < lo:
        return [], []
    first, last = math.ceil(lo - 1e-9), math.floor(hi + 1e-9)
    step = max(1, math.ceil((last - first + 1) / most))
    values = [float(e) for e in range(first, last + 1, step)]
    if len(values) < 3:
        values = sorted({math.log10(m) + e for e in range(first - 1, last + 2) for m in (1, 2, 5)
                         if lo - 1e-9 <= math.log10(m) + e <= hi + 1e-9})
    if len(values) < 2:  # less than a factor 2 in range: the ends and the middle
        values = [lo, (lo + hi) / 2, hi]
    return values, [f"{10 ** v:.3g}" for v in values]


_COMPARED = ("model", "checkpoint", "checkpoint_sha256", "weights", "data", "bn", "loss", "subset", "directions",
             "norm", "ignore", "seed", "x", "y", "kind")


def _short(key: str, value: Any) -> str:
    if key in ("checkpoint", "checkpoint2") and value:
        return PurePath(str(value)).name
    if key == "checkpoint_sha256" and value:
        return str(value)[:8]
    if value is None or value == "":
        return "none"
    return str(value)


def differing_settings(attrs: Sequence[Mapping[str, Any]]) -> list[str]:
    """For each store, ``"bn=eval, checkpoint=epoch_0004.safetensors"``: the settings that differ between them.

    Compared: model, checkpoint (file name; else the first 8 digits of the weights' sha256), weights, data, bn,
    loss, subset, directions, norm, ignore, seed, grid, kind. Stores that agree on all of them get ``""``.
    """
    if len(attrs) < 2:
        return ["" for _ in attrs]
    keys = [k for k in _COMPARED if len({_short(k, a.get(k)) for a in attrs}) > 1]
    if "checkpoint" in keys:  # the file names say it (a hash, or "untrained", would only repeat it)
        keys = [k for k in keys if k not in ("checkpoint_sha256", "weights")]
    if "directions" in keys:  # seed, norm and ignore only say how the differing directions were made
        keys = [k for k in keys if k not in ("seed", "norm", "ignore")]
    names = {"checkpoint_sha256": "sha256"}
    return [", ".join(f"{names.get(k, k)}={_short(k, a.get(k))}" for k in keys) for a in attrs]


__all__ = ["BN_RECOMPUTE_NOTE", "UNTRAINED", "differing_settings", "log_ticks", "notes", "qualifiers", "sig",
           "subset_note", "subset_tag", "titled", "untrained", "with_error"]
