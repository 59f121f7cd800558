"""The study report: one self-contained HTML page (and a Markdown twin) per run store.

``build_report(run_dir)`` reads the run store written by ``husai.experiments``
(README, "The run store") and writes ``report.html`` and ``report.md``. Modules: ``store`` (reading,
tolerant of missing files), ``figures`` (matplotlib, Agg), ``geometry`` (decoders vs
Fourier planes), ``guidelines`` (verdict and practitioner text, rule-based),
``render`` (document model, HTML and Markdown), ``sections_*`` (one per topic) and
``build`` (assembly). pandas and matplotlib are imported only when a report is built.
"""

from husai.report.build import build_report

__all__ = ["build_report"]
