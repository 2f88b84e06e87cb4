"""The shared pieces of the payswitch dashboards: PromQL selectors, one helper per panel
shape, the templating variables and the dashboard frame.

Built on grafana-foundation-sdk (Grafana's own builders, generated from its dashboard
schema). We chose it over grafanalib because it is maintained by Grafana Labs with a build
per Grafana minor (10.1 to 11.6 and next), ships type hints (py.typed: mypy strict checks
our calls against the schema), and emits the current JSON model (schemaVersion, panel
options); grafanalib's last release is 0.7.1 (January 2024), its maintainers left with
Weaveworks, and it has no type hints. The SDK's PyPI versions carry an epoch
(``<timestamp>!<grafana version>``), so pyproject pins one build exactly: an open range
would resolve to whichever Grafana line was published last, not the newest.

Every panel helper takes the panel's words (title, description), its unit and its queries;
the rest (datasource, colours, legend, tooltip, reduce options) is decided here once, so
the four dashboards differ only in what they show.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as builders
from grafana_foundation_sdk.builders import heatmap as heatmap_builders
from grafana_foundation_sdk.builders import prometheus as prometheus_builders
from grafana_foundation_sdk.builders import stat as stat_builders
from grafana_foundation_sdk.builders import statetimeline as statetimeline_builders
from grafana_foundation_sdk.builders import text as text_builders
from grafana_foundation_sdk.builders import timeseries as timeseries_builders
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants
from grafana_foundation_sdk.models import common, dashboard, heatmap, prometheus
from grafana_foundation_sdk.models import text as text_models

# --- PromQL -------------------------------------------------------------------------------

#: The switch's series on every dashboard: the job and instance variables, never a host.
SWITCH = 'job=~"$job",instance=~"$instance"'
#: The network simulators' series (their own job, chosen by the channels_job variable).
SIMULATORS = 'job=~"$channels_job"'
#: Recording rules aggregate instances away; they keep only the job.
RULES = 'job=~"$job"'
#: Payments answered with a result (not rejected, not replayed).
ANSWERED = 'status=~"approved|declined|failed|unknown"'
#: A correct business answer: what the availability SLI counts as good.
GOOD = 'status=~"approved|declined"'


def series(metric: str, *matchers: str, labels: str = SWITCH) -> str:
    """``metric{labels,matchers...}``."""
    return f"{metric}{{{','.join((labels, *matchers))}}}"


def rate(metric: str, *matchers: str, labels: str = SWITCH, fn: str = "rate") -> str:
    """``rate(metric{...}[$__rate_interval])`` (or ``fn``, e.g. increase): over the window
    Grafana sizes to cover at least four scrapes."""
    return f"{fn}({series(metric, *matchers, labels=labels)}[$__rate_interval])"


def by(labels: str) -> str:
    """``sum by (labels) `` or, without labels, ``sum``."""
    return f"sum by ({labels}) " if labels else "sum"


def sum_rate(metric: str, *matchers: str, by_labels: str = "", labels: str = SWITCH) -> str:
    """``sum [by (...)] (rate(metric{...}[$__rate_interval]))``."""
    return f"{by(by_labels)}({rate(metric, *matchers, labels=labels)})"


def quantile(q: float, histogram: str, by_labels: str = "", labels: str = SWITCH) -> str:
    """The q-quantile of a histogram (bucket-interpolated), per ``by_labels``."""
    group = f"{by_labels}, le" if by_labels else "le"
    buckets = rate(f"{histogram}_bucket", labels=labels)
    return f"histogram_quantile({q}, sum by ({group}) ({buckets}))"


#: Payments/s answered with a result, and all that arrived (answered, rejected or replayed).
ANSWERED_RATE = sum_rate("payswitch_payments_total", ANSWERED)
ARRIVING_RATE = (
    f"sum({rate('payswitch_payments_total', ANSWERED)}"
    f" or {rate('payswitch_rejected_requests_total')}"
    f" or {rate('payswitch_idempotent_replays_total')})"
)
SUCCESS_RATIO = f"{sum_rate('payswitch_payments_total', GOOD)} / {ANSWERED_RATE}"
#: The arrival-to-reply latency histogram (switch side).
PAYMENT_LATENCY = "payswitch_payment_duration_seconds"
IN_FLIGHT = f"sum({series('payswitch_in_flight_payments')})"
OPEN_CONNECTIONS = f"sum({series('payswitch_open_connections')})"
REJECTED_BY_REASON = sum_rate("payswitch_rejected_requests_total", by_labels="reason")


@dataclass(frozen=True)
class Query:
    """One PromQL target of a panel; refIds (A, B, ...) follow the order in the panel."""

    expr: str
    legend: str
    instant: bool = False
    heatmap: bool = False


def q(expr: str, legend: str, *, instant: bool = False) -> Query:
    """A query over the dashboard's time range, or only at its end (``instant``)."""
    return Query(expr, legend, instant=instant)


# --- Panel shapes -------------------------------------------------------------------------

#: Every panel and query reads the dashboard's datasource variable, so the dashboards work
#: with whatever name or uid the Prometheus data source has in the importing Grafana.
DATASOURCE = dashboard.DataSourceRef(type_val="prometheus", uid="${datasource}")

#: Threshold steps: (colour, from value); the first step is the base (from -inf, None).
Steps = Sequence[tuple[str, float | None]]
PLAIN: Steps = (("green", None),)
#: Burn rates: 1 spends the 30-day budget exactly; 6 and 14.4 are the page thresholds.
BURN: Steps = (("transparent", None), ("yellow", 1), ("orange", 6), ("red", 14.4))
BURN_STAT: Steps = (("green", None), ("orange", 1), ("red", 14.4))
BUDGET_LEFT: Steps = (("red", None), ("orange", 0.25), ("green", 0.5))
AVAILABILITY: Steps = (("red", None), ("orange", 0.999), ("green", 0.9995))
ANY_IS_BAD: Steps = (("green", None), ("red", 1))
#: The unit of a burn rate: a multiple of the budgeted spend.
TIMES = "suffix:×"


def thresholds(steps: Steps) -> builders.ThresholdsConfig:
    return (
        builders.ThresholdsConfig()
        .mode(dashboard.ThresholdsMode.ABSOLUTE)
        .steps([dashboard.Threshold(value=value, color=color) for color, value in steps])
    )


def _targets(queries: Sequence[Query]) -> list[cogbuilder.Builder[variants.Dataquery]]:
    targets: list[cogbuilder.Builder[variants.Dataquery]] = []
    for index, query in enumerate(queries):
        target = (
            prometheus_builders.Dataquery()
            .expr(query.expr)
            .legend_format(query.legend)
            .ref_id(chr(ord("A") + index))
            .datasource(DATASOURCE)
            .editor_mode(prometheus.QueryEditorMode.CODE)
        )
        target = target.instant() if query.instant else target.range()
        if query.heatmap:
            target = target.format(prometheus.PromQueryFormat.HEATMAP)
        targets.append(target)
    return targets


def _legend() -> common_builders.VizLegendOptions:
    return (
        common_builders.VizLegendOptions()
        .display_mode(common.LegendDisplayMode.LIST)
        .placement(common.LegendPlacement.BOTTOM)
        .show_legend(True)
    )


def _tooltip(
    mode: common.TooltipDisplayMode, sort: common.SortOrder
) -> common_builders.VizTooltipOptions:
    return common_builders.VizTooltipOptions().mode(mode).sort(sort)


def _palette(mode: dashboard.FieldColorModeId) -> builders.FieldColor:
    return builders.FieldColor().mode(mode)


@dataclass(frozen=True)
class RightAxis:
    """Query ``ref`` drawn on a right-hand axis in its own unit (two scales on one panel)."""

    ref: str
    unit: str


def timeseries(
    title: str,
    description: str,
    unit: str,
    *queries: Query,
    span: int,
    height: int = 8,
    min_val: float | None = None,
    max_val: float | None = None,
    steps: Steps = PLAIN,
    threshold_lines: bool = False,
    log_scale: bool = False,
    bars: bool = False,
    right_axis: RightAxis | None = None,
) -> timeseries_builders.Panel:
    """A graph over time. ``threshold_lines`` draws the threshold steps as lines (an alert's
    limit); ``log_scale`` for latencies spanning decades; ``bars`` for counts per interval."""
    panel = (
        timeseries_builders.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(_targets(queries))
        .span(span)
        .height(height)
        .unit(unit)
        .color_scheme(_palette(dashboard.FieldColorModeId.PALETTE_CLASSIC))
        .thresholds(thresholds(steps))
        .draw_style(common.GraphDrawStyle.BARS if bars else common.GraphDrawStyle.LINE)
        .line_width(1)
        .fill_opacity(80 if bars else 10)
        .show_points(common.VisibilityMode.NEVER)
        .span_nulls(False)
        .legend(_legend())
        .tooltip(_tooltip(common.TooltipDisplayMode.MULTI, common.SortOrder.DESCENDING))
    )
    if min_val is not None:
        panel = panel.min(min_val)
    if max_val is not None:
        panel = panel.max(max_val)
    if threshold_lines:
        panel = panel.thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.LINE)
        )
    if log_scale:
        panel = panel.scale_distribution(
            common_builders.ScaleDistributionConfig().type(common.ScaleDistribution.LOG).log(10)
        )
    if right_axis is not None:
        panel = panel.override_by_query(
            right_axis.ref,
            [
                dashboard.DynamicConfigValue(id_val="unit", value=right_axis.unit),
                dashboard.DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
            ],
        )
    return panel


def stat(
    title: str,
    description: str,
    unit: str,
    *queries: Query,
    span: int,
    height: int = 4,
    decimals: int | None = None,
    min_val: float | None = None,
    max_val: float | None = None,
    steps: Steps = PLAIN,
    sparkline: bool = True,
    show_names: bool = False,
    steps_by_name: dict[str, Steps] | None = None,
) -> stat_builders.Panel:
    """One number (the last value), coloured by ``steps``; ``sparkline`` draws its recent
    history behind it; ``show_names`` labels each value (a panel with several queries);
    ``steps_by_name`` gives the series of that display name thresholds of its own."""
    panel = (
        stat_builders.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(_targets(queries))
        .span(span)
        .height(height)
        .unit(unit)
        .color_scheme(_palette(dashboard.FieldColorModeId.THRESHOLDS))
        .thresholds(thresholds(steps))
        .reduce_options(
            common_builders.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False)
        )
        .color_mode(common.BigValueColorMode.VALUE)
        .graph_mode(common.BigValueGraphMode.AREA if sparkline else common.BigValueGraphMode.NONE)
        .justify_mode(common.BigValueJustifyMode.AUTO)
        .orientation(common.VizOrientation.AUTO)
        .text_mode(
            common.BigValueTextMode.VALUE_AND_NAME if show_names else common.BigValueTextMode.AUTO
        )
    )
    if decimals is not None:
        panel = panel.decimals(decimals)
    if min_val is not None:
        panel = panel.min(min_val)
    if max_val is not None:
        panel = panel.max(max_val)
    for name, name_steps in (steps_by_name or {}).items():
        panel = panel.override_by_name(
            name,
            [
                dashboard.DynamicConfigValue(
                    id_val="thresholds", value=thresholds(name_steps).build()
                )
            ],
        )
    return panel


def state_timeline(
    title: str,
    description: str,
    query: Query,
    *,
    states: dict[int, tuple[str, str]],
    steps: Steps,
    span: int,
    height: int = 8,
) -> statetimeline_builders.Panel:
    """A band per series coloured by state; ``states`` maps a value to (text, colour)."""
    mapping = dashboard.ValueMap(
        options={
            str(value): dashboard.ValueMappingResult(text=text, color=color, index=index)
            for index, (value, (text, color)) in enumerate(sorted(states.items()))
        }
    )
    return (
        statetimeline_builders.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(_targets([query]))
        .span(span)
        .height(height)
        .color_scheme(_palette(dashboard.FieldColorModeId.THRESHOLDS))
        .thresholds(thresholds(steps))
        .mappings([mapping])
        .min(0)
        .fill_opacity(80)
        .line_width(0)
        .merge_values(True)
        .show_value(common.VisibilityMode.AUTO)
        .align_value(common.TimelineValueAlignment.LEFT)
        .row_height(0.9)
        .legend(_legend())
        .tooltip(_tooltip(common.TooltipDisplayMode.SINGLE, common.SortOrder.NONE))
    )


def bucket_heatmap(
    title: str, description: str, unit: str, query: Query, *, span: int, height: int = 8
) -> heatmap_builders.Panel:
    """A histogram's buckets over time, as Prometheus computed them (no re-bucketing)."""
    return (
        heatmap_builders.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(_targets([Query(query.expr, query.legend, heatmap=True)]))
        .span(span)
        .height(height)
        .unit(unit)
        .color_scheme(_palette(dashboard.FieldColorModeId.THRESHOLDS))
        .thresholds(thresholds(PLAIN))
        .calculate(False)
        .y_axis(heatmap_builders.YAxisConfig().unit(unit))
        .color(
            # Grafana's own defaults, spelt out: the SDK's model defaults exponent and steps
            # to 0, which would paint every cell the same colour.
            heatmap_builders.HeatmapColorOptions()
            .mode(heatmap.HeatmapColorMode.SCHEME)
            .scheme("Oranges")
            .fill("dark-orange")
            .scale(heatmap.HeatmapColorScale.EXPONENTIAL)
            .exponent(0.5)
            .steps(64)
        )
        .cell_gap(1)
        .mode(common.TooltipDisplayMode.SINGLE)
        .hide_y_histogram()
    )


def note(title: str, markdown: str, *, span: int = 24, height: int = 4) -> text_builders.Panel:
    """Markdown text: what a dashboard cannot show yet, and why."""
    return (
        text_builders.Panel()
        .title(title)
        .span(span)
        .height(height)
        .mode(text_models.TextMode.MARKDOWN)
        .content(markdown)
    )


def row(title: str) -> builders.Row:
    return builders.Row(title).collapsed(False)


# --- Variables and the dashboard frame ----------------------------------------------------


def _label_values(name: str, label: str, query: str, default: str) -> builders.QueryVariable:
    """A variable listing the values of a label; ``default`` is selected on first load."""
    return (
        builders.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query({"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"})
        .current(dashboard.VariableOption(selected=True, text=default, value=default))
        .refresh(dashboard.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard.VariableSort.ALPHABETICAL_ASC)
        .hide(dashboard.VariableHide.DONT_HIDE)
        .include_all(False)
        .multi(False)
        .regex("")
        .options([])
    )


def datasource_variable() -> builders.DatasourceVariable:
    return (
        builders.DatasourceVariable("datasource")
        .label("Prometheus")
        .type("prometheus")
        .hide(dashboard.VariableHide.DONT_HIDE)
        .include_all(False)
        .multi(False)
        .regex("")
    )


def job_variable() -> builders.QueryVariable:
    return _label_values("job", "Job", "label_values(payswitch_ready, job)", "payswitch")


def instance_variable() -> builders.QueryVariable:
    """Every instance of the job by default (``.*``), or any selection of them."""
    return (
        _label_values(
            "instance", "Instance", 'label_values(payswitch_ready{job=~"$job"}, instance)', ""
        )
        .current(dashboard.VariableOption(selected=True, text=["All"], value=["$__all"]))
        .include_all(True)
        .all_value(".*")
        .multi(True)
    )


def simulators_job_variable() -> builders.QueryVariable:
    return _label_values(
        "channels_job",
        "Simulators job",
        "label_values(channels_active_faults, job)",
        "payswitch-channels",
    )


def frame(
    uid: str,
    title: str,
    description: str,
    variables: Sequence[builders.QueryVariable | builders.DatasourceVariable],
) -> builders.Dashboard:
    """A payswitch dashboard without panels: uid, time range, refresh, the built-in
    annotations, a drop-down of the other payswitch dashboards (keeping time and variables),
    and the datasource variable followed by ``variables``."""
    board = (
        builders.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["payswitch"])
        .timezone("browser")
        .editable()
        .tooltip(dashboard.DashboardCursorSync.CROSSHAIR)
        .refresh("10s")
        .live_now(False)
        .time("now-30m", "now")
        .fiscal_year_start_month(0)
        .annotation(
            builders.AnnotationQuery()
            .name("Annotations & Alerts")
            .datasource(dashboard.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
            .enable(True)
            .hide(True)
            .icon_color("rgba(0, 211, 255, 1)")
            .type("dashboard")
            .built_in(1)
        )
        .link(
            builders.DashboardLink("payswitch")
            .type(dashboard.DashboardLinkType.DASHBOARDS)
            .tags(["payswitch"])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
        .with_variable(datasource_variable())
    )
    for variable in variables:
        board = board.with_variable(variable)
    return board
