"""The self-contained HTML report of a run directory; sections are registered in :mod:`.registry`."""

from __future__ import annotations

from lossatlas.viz.report.builder import ReportResult, build_report
from lossatlas.viz.report.registry import Section, esc, register, register_artifact

__all__ = ["ReportResult", "Section", "build_report", "esc", "register", "register_artifact"]
