"""A W&B Report for one study, built with ``wandb-workspaces`` when W&B is online.

The report shows the study's trial runs (its W&B group): parallel coordinates over
the factors and the instability score, each factor's importance with respect to the
score, the NaN rate per level of each categorical factor (the mean of each run's 0/1
``nan``), and the analysis run's ranking and trials tables.
"""

from __future__ import annotations

from typing import Any

from nansearch.trial.runner import QUEUED


def _require():
    try:
        import wandb_workspaces.reports.v2 as wr
        from wandb_workspaces import expr
    except ImportError:
        raise ImportError(
            "W&B Reports need wandb-workspaces: pip install 'nansearch[reports]'"
        ) from None
    return wr, expr


def report_blocks(project: str, entity: str, study: str, ranking: dict[str, Any]) -> list:
    """The report's blocks: conclusions, the trials' panels, the analysis tables."""
    from nansearch.analysis.ranking import Ranking

    wr, expr = _require()
    typed = Ranking.from_json(ranking)
    factors = typed.factors
    names = [f.name for f in factors]

    def runset(job_type: str, title: str, *more):
        return wr.Runset(
            entity=entity,
            project=project,
            name=title,
            filters=expr.And(
                expr.Metric("Group") == study, expr.Metric("JobType") == job_type, *more
            ),
        )

    # the ranking's tables rest on the cover and focus trials: confirm and isolate probes
    # rerun and vary failures on purpose and would inflate every level they share
    searched = expr.Config("phase").isin(list(QUEUED))

    columns = [wr.ParallelCoordinatesPlotColumn(metric=wr.Config(name)) for name in names]
    columns.append(wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric("score")))
    panels = [
        wr.ParallelCoordinatesPlot(title="Factors and instability score", columns=columns),
        wr.ParameterImportancePlot(with_respect_to="score"),
    ]
    for factor in factors:
        if factor.kind == "categorical":
            panels.append(
                wr.BarPlot(
                    title=f"NaN rate per {factor.name} level",
                    metrics=["nan"],
                    groupby=wr.Config(factor.name),
                    groupby_aggfunc="mean",
                    orientation="h",
                )
            )
    panels.append(wr.LinePlot(title="max |logit| per step", x="Step", y=["logit_absmax"]))

    conclusions = [c.text for c in typed.conclusions]
    summary = (
        f"{typed.trials} trials: {typed.nan} NaN, {typed.finite} finite, {typed.errors} errors."
    )
    blocks: list = [wr.P(summary)]
    if conclusions:
        blocks += [wr.H2("Conclusions"), wr.UnorderedList(items=conclusions)]
    blocks += [
        wr.H2("Trials"),
        wr.P(
            "The panels below show the cover and focus trials, the runs the design and the "
            "sampler chose, as the ranking's tables count them; confirmation and isolation "
            "probes are left out. NaN rate per level is the mean of each run's 0/1 nan."
        ),
        wr.PanelGrid(
            runsets=[runset("trial", f"{study} cover and focus trials", searched)],
            panels=panels,
        ),
        wr.H2("Ranking and trials tables"),
        wr.PanelGrid(
            runsets=[runset("analysis", f"{study} analysis")],
            panels=[
                wr.WeavePanelSummaryTable(table_name="ranking"),
                wr.WeavePanelSummaryTable(table_name="trials"),
            ],
        ),
        wr.H2("Reruns"),
        wr.P(
            "The runs of `nansearch rerun`: each failing trial rerun with diagnostics, its "
            "diagnosis, stage and module in the summary, the serving conclusion in "
            "serves, and the magnitudes of the modules before the NaN in trail."
        ),
        wr.PanelGrid(
            runsets=[runset("rerun", f"{study} reruns")],
            panels=[wr.RunComparer(), wr.WeavePanelSummaryTable(table_name="trail")],
        ),
    ]
    return blocks


def build_report(*, entity: str | None, project: str, study: str, ranking: dict[str, Any]) -> str:
    """Save the study's report to W&B and return its URL."""
    wr, _ = _require()
    kwargs = {"entity": entity} if entity else {}
    report = wr.Report(
        project=project,
        title=f"nansearch {study}"[:128],
        description="Which suspected cause makes the logits NaN, trial by trial.",
        **kwargs,
    )
    report.blocks = report_blocks(project, report.entity, study, ranking)
    report.save()
    return report.url
