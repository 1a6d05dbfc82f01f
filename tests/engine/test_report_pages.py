"""Report pages the engine builds: an experiment's numbers as the self-contained HTML page."""

from __future__ import annotations

import re

from perspective_unet.engine.experiment_report import ConfigurationSummary, ExperimentReport
from perspective_unet.engine.experiment_report_page import experiment_page
from perspective_unet.stats import Comparison, spread
from perspective_unet.viz.report import render_report


def _report() -> ExperimentReport:
    scores = {
        "full": [{("c1", "liver"): (0.9, 2.0), ("c2", "liver"): (0.7, 5.0)}],
        "no_scsi": [{("c1", "liver"): (0.8, 3.0), ("c2", "liver"): (0.6, 6.0)}],
    }
    full = ConfigurationSummary(
        "full", ["seed_1"], spread([0.8]), spread([3.5]), {"liver": spread([0.8])}, (0.7, 0.9), {"c1": 0.9, "c2": 0.7}
    )
    ablated = ConfigurationSummary(
        "no_scsi",
        ["seed_1"],
        spread([0.7]),
        spread([4.5]),
        {"liver": spread([0.7])},
        (0.6, 0.8),
        {"c1": 0.8, "c2": 0.6},
        Comparison(2, -0.1, 0.5, 0.5),
    )
    return ExperimentReport(
        "ablation",
        "full",
        "corrected",
        "case",
        0.95,
        ["liver"],
        [full, ablated],
        {"no_scsi/seed_2": "no evaluation"},
        scores,
    )


def test_experiment_page_holds_the_tables_units_and_box_plot():
    page = experiment_page(_report())
    assert [t.title.split(":")[0].split(" (")[0] for t in page.tables] == [
        "Configurations",
        "Comparison with full",
        "Units",
    ]
    configurations, comparisons, units = page.tables
    assert configurations.rows[0][:3] == ("full", 1, 80.0) and configurations.rows[1][4] == 4.5
    assert comparisons.rows[0][5] == "reference" and comparisons.rows[1][5] == -10.0
    assert units.sortable and [r[0] for r in units.rows] == ["c1", "c2"]
    assert [round(v, 6) for v in units.rows[1][1:]] == [70.0, 60.0]
    text = render_report(page)
    assert "no_scsi/seed_2 (no evaluation)" in text
    assert len(re.findall(r"data:image/png;base64,", text)) == 1
    assert '<table id="table-2" class="sortable">' in text
