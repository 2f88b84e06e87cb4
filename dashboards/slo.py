"""payswitch / SLOs: objectives, error budget left and burn rates per alert window, all read
from the recording rules in dashboards/prometheus/rules/recording.yml."""

from __future__ import annotations

from grafana_foundation_sdk.builders.dashboard import Dashboard
from grafana_foundation_sdk.builders.stat import Panel as StatPanel
from grafana_foundation_sdk.builders.timeseries import Panel as TimeseriesPanel

from dashboards.panels import (
    ANY_IS_BAD,
    AVAILABILITY,
    BUDGET_LEFT,
    BURN,
    PLAIN,
    RULES,
    TIMES,
    Query,
    Steps,
    frame,
    job_variable,
    q,
    row,
    stat,
    timeseries,
)


def rule(name: str) -> str:
    """A recording rule's series for the selected job."""
    return f"{name}{{{RULES}}}"


def burn_rates(sli: str, windows: tuple[str, ...], title: str, description: str) -> TimeseriesPanel:
    return timeseries(
        title,
        description,
        TIMES,
        *(q(rule(f"payswitch:sli_{sli}:burn_rate{w}"), w) for w in windows),
        span=12,
        steps=BURN,
        threshold_lines=True,
    )


def error_ratio(sli: str, title: str, description: str) -> TimeseriesPanel:
    return timeseries(
        title,
        description,
        "percentunit",
        *(q(rule(f"payswitch:sli_{sli}_error:ratio_rate{w}"), w) for w in ("5m", "1h", "1d")),
        span=12,
    )


def one_number(
    title: str, description: str, unit: str, query: Query, decimals: int, steps: Steps = PLAIN
) -> StatPanel:
    return stat(title, description, unit, query, span=6, decimals=decimals, steps=steps)


PAGE = ("5m", "30m", "1h", "6h")
TICKET = ("2h", "6h", "1d", "3d")
PAGE_WHEN = "Page when 1h and 5m both exceed 14.4, or 6h and 30m both exceed 6."
TICKET_WHEN = "Ticket when 1d and 2h both exceed 3, or 3d and 6h both exceed 1."


def build() -> Dashboard:
    return (
        frame(
            "payswitch-slo",
            "payswitch / SLOs",
            "Availability and latency SLOs: objectives, error budget left, burn rates per alert "
            "window. Source: dashboards/prometheus/rules/recording.yml.",
            [job_variable()],
        )
        .with_row(row("Objectives and budgets"))
        .with_panel(
            one_number(
                "Availability objective",
                "Defined once, in the recording rule payswitch:slo_objective:availability. Good "
                "= approved or declined; bad = failed, unknown, shed (overloaded, unavailable).",
                "percentunit",
                q("max(payswitch:slo_objective:availability)", "objective"),
                decimals=2,
            )
        )
        .with_panel(
            one_number(
                "Availability budget left (30d)",
                "1 - (bad/events over 30 days) / (1 - objective). Below 0: overspent.",
                "percentunit",
                q(f"min({rule('payswitch:sli_availability:error_budget_remaining_30d')})", "left"),
                decimals=1,
                steps=BUDGET_LEFT,
            )
        )
        .with_panel(
            one_number(
                "Latency objective",
                "Share of accepted payments answered within 250 ms; defined in "
                "payswitch:slo_objective:latency.",
                "percentunit",
                q("max(payswitch:slo_objective:latency)", "objective"),
                decimals=2,
            )
        )
        .with_panel(
            one_number(
                "Latency budget left (30d)",
                "1 - (slow/all over 30 days) / (1 - objective).",
                "percentunit",
                q(f"min({rule('payswitch:sli_latency:error_budget_remaining_30d')})", "left"),
                decimals=1,
                steps=BUDGET_LEFT,
            )
        )
        .with_panel(
            one_number(
                "Availability SLI (1h)",
                "Good events over all events in the last hour.",
                "percentunit",
                q(f"1 - max({rule('payswitch:sli_availability_error:ratio_rate1h')})", "1h"),
                decimals=3,
                steps=AVAILABILITY,
            )
        )
        .with_panel(
            one_number(
                "Latency SLI (1h)",
                "Share of payments answered within 250 ms in the last hour.",
                "percentunit",
                q(f"1 - max({rule('payswitch:sli_latency_error:ratio_rate1h')})", "1h"),
                decimals=3,
                steps=(("red", None), ("green", 0.99)),
            )
        )
        .with_panel(
            stat(
                "Firing SLO alerts",
                "Multi-window burn-rate alerts firing now (page: 1h/5m > 14.4, 6h/30m > 6; "
                "ticket: 1d/2h > 3, 3d/6h > 1).",
                "short",
                q(
                    'count(ALERTS{alertname=~"Payswitch(Availability|Latency)BudgetBurn",'
                    'alertstate="firing",job=~"$job"}) or vector(0)',
                    "firing",
                ),
                span=6,
                steps=ANY_IS_BAD,
            )
        )
        .with_panel(
            one_number(
                "SLI events/s",
                "Events the availability SLI counts (5m rate). With no events the ratios are "
                "undefined and no SLO alert can fire; PayswitchNoTraffic covers that.",
                "ops",
                q(
                    f"sum({rule('payswitch:sli_availability_events:rate5m')})",
                    "availability events/s",
                ),
                decimals=1,
            )
        )
        .with_row(row("Availability burn rates"))
        .with_panel(
            burn_rates("availability", PAGE, "Availability burn rate, page windows", PAGE_WHEN)
        )
        .with_panel(
            burn_rates(
                "availability", TICKET, "Availability burn rate, ticket windows", TICKET_WHEN
            )
        )
        .with_panel(
            error_ratio(
                "availability",
                "Availability error ratio",
                "Bad events / all events for the availability SLI.",
            )
        )
        .with_panel(
            timeseries(
                "Availability events/s: all vs bad",
                "The 5m rates behind the availability SLI.",
                "ops",
                q(rule("payswitch:sli_availability_events:rate5m"), "all"),
                q(rule("payswitch:sli_availability_bad:rate5m"), "bad"),
                span=12,
            )
        )
        .with_row(row("Latency burn rates"))
        .with_panel(burn_rates("latency", PAGE, "Latency burn rate, page windows", PAGE_WHEN))
        .with_panel(burn_rates("latency", TICKET, "Latency burn rate, ticket windows", TICKET_WHEN))
        .with_panel(
            error_ratio(
                "latency", "Latency error ratio", "Bad events / all events for the latency SLI."
            )
        )
        .with_panel(
            timeseries(
                "Latency events/s: all vs within 250 ms",
                "The 5m rates behind the latency SLI.",
                "ops",
                q(rule("payswitch:sli_latency_events:rate5m"), "all"),
                q(rule("payswitch:sli_latency_good:rate5m"), "within 250 ms"),
                span=12,
            )
        )
    )
