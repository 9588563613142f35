"""The self-contained HTML report of a run directory (sections registered in :mod:`.registry`)."""

from __future__ import annotations

from lossatlas.report.registry import Section, esc, register, register_artifact

__all__ = ["Section", "build_report", "esc", "register", "register_artifact"]


def __getattr__(name: str):  # lazy: importing the registry must not import plotly
    if name == "build_report":
        from lossatlas.report.builder import build_report

        return build_report
    raise AttributeError(name)
