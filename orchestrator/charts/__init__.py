"""HTML pages with charts: the campaign results report and the member-base analysis, each one self-contained file.

``render_report_page(document)`` and ``render_analysis_page(document)`` take the JSON documents of
``orchestrator report --json`` and ``orchestrator analyze --json`` (as Python values) and return the page;
``write_report_page`` and ``write_analysis_page`` write it to a file.
"""

from orchestrator.charts.analysis_page import render_analysis_page, write_analysis_page
from orchestrator.charts.report_page import render_report_page, write_report_page

__all__ = ["render_analysis_page", "render_report_page", "write_analysis_page", "write_report_page"]
