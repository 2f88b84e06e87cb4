"""payswitch / Overview: is the switch healthy right now?"""

from __future__ import annotations

from grafana_foundation_sdk.builders.dashboard import Dashboard

from dashboards.panels import (
    ANSWERED,
    ANSWERED_RATE,
    ANY_IS_BAD,
    AVAILABILITY,
    BUDGET_LEFT,
    BURN_STAT,
    IN_FLIGHT,
    OPEN_CONNECTIONS,
    PAYMENT_LATENCY,
    REJECTED_BY_REASON,
    RULES,
    SUCCESS_RATIO,
    TIMES,
    frame,
    instance_variable,
    job_variable,
    q,
    quantile,
    row,
    series,
    stat,
    sum_rate,
    timeseries,
)

APPROVED = 'status="approved"'


def build() -> Dashboard:
    payments = "payswitch_payments_total"
    return (
        frame(
            "payswitch-overview",
            "payswitch / Overview",
            "Is the switch healthy right now? Throughput, success, latency, concurrency and SLO "
            "state.",
            [job_variable(), instance_variable()],
        )
        .with_row(row("Now"))
        .with_panel(
            stat(
                "Payments/s",
                "Payments answered per second (approved, declined, failed or unknown), all "
                "channels and instances.",
                "ops",
                q(ANSWERED_RATE, "payments/s"),
                span=4,
                decimals=1,
            )
        )
        .with_panel(
            stat(
                "Success rate",
                "Approved or declined (a correct business answer) over all answered payments. "
                "Failed and unknown count against it. Same definition as the availability SLI, "
                "without the shed requests.",
                "percentunit",
                q(SUCCESS_RATIO, "success"),
                span=4,
                decimals=3,
                min_val=0,
                max_val=1,
                steps=AVAILABILITY,
            )
        )
        .with_panel(
            stat(
                "p50 latency",
                "Median time from a payment's arrival to its reply, from the histogram "
                "(bucket-interpolated).",
                "s",
                q(quantile(0.5, PAYMENT_LATENCY), "p50"),
                span=4,
            )
        )
        .with_panel(
            stat(
                "p99 latency",
                "99th percentile time from arrival to reply. The latency SLO asks 99% within "
                "250 ms.",
                "s",
                q(quantile(0.99, PAYMENT_LATENCY), "p99"),
                span=4,
                steps=(("green", None), ("orange", 0.1), ("red", 0.25)),
            )
        )
        .with_panel(
            stat(
                "In flight",
                "Payments accepted and not yet answered, summed over instances.",
                "short",
                q(IN_FLIGHT, "in flight"),
                span=4,
            )
        )
        .with_panel(
            stat(
                "Ready instances",
                "Instances reporting ready (/readyz) against instances Prometheus scrapes for "
                "this job.",
                "short",
                q(f"sum({series('payswitch_ready')})", "ready"),
                q(f"count({series('up')})", "scraped"),
                span=4,
                show_names=True,
            )
        )
        .with_row(row("SLO state"))
        .with_panel(
            stat(
                "Availability burn rate (1h)",
                "Availability error ratio over the last hour divided by the error budget "
                "(1 - objective). 1 = spending the budget exactly over 30 days; 14.4 (with 5m) "
                "pages.",
                TIMES,
                q(f"max(payswitch:sli_availability:burn_rate1h{{{RULES}}})", "1h"),
                span=6,
                decimals=2,
                steps=BURN_STAT,
            )
        )
        .with_panel(
            stat(
                "Latency burn rate (1h)",
                "Share of payments slower than 250 ms over the last hour, divided by the "
                "latency error budget.",
                TIMES,
                q(f"max(payswitch:sli_latency:burn_rate1h{{{RULES}}})", "1h"),
                span=6,
                decimals=2,
                steps=BURN_STAT,
            )
        )
        .with_panel(
            stat(
                "Availability budget left (30d)",
                "Share of the 30-day availability error budget not yet spent (negative: "
                "overspent). Over the data Prometheus has, at most 30 days.",
                "percentunit",
                q(
                    f"min(payswitch:sli_availability:error_budget_remaining_30d{{{RULES}}})",
                    "budget left",
                ),
                span=6,
                decimals=1,
                steps=BUDGET_LEFT,
            )
        )
        .with_panel(
            stat(
                "Firing payswitch alerts",
                "payswitch alerts firing now (SLO burn and operational). See Prometheus "
                "/alerts or Alertmanager for which.",
                "short",
                q(
                    'count(ALERTS{alertname=~"Payswitch.*",alertstate="firing",job=~"$job"})'
                    " or vector(0)",
                    "firing",
                ),
                span=6,
                steps=ANY_IS_BAD,
            )
        )
        .with_row(row("Traffic and latency"))
        .with_panel(
            timeseries(
                "Payments/s by channel and status",
                "Payment results per second. `reversed` and resolved outcomes are counted when "
                "the resolver settles an unknown payment.",
                "ops",
                q(sum_rate(payments, by_labels="channel, status"), "{{channel}} {{status}}"),
                span=12,
            )
        )
        .with_panel(
            timeseries(
                "Latency percentiles",
                "Arrival-to-reply latency over all channels (log scale), from the histogram "
                "buckets (0.5 ms to 30 s).",
                "s",
                q(quantile(0.5, PAYMENT_LATENCY), "p50"),
                q(quantile(0.9, PAYMENT_LATENCY), "p90"),
                q(quantile(0.99, PAYMENT_LATENCY), "p99"),
                q(quantile(0.999, PAYMENT_LATENCY), "p99.9"),
                span=12,
                log_scale=True,
            )
        )
        .with_panel(
            timeseries(
                "Success rate",
                "success = (approved + declined) / answered; approval = approved / answered (a "
                "business KPI, not an SLI).",
                "percentunit",
                q(SUCCESS_RATIO, "success"),
                q(f"{sum_rate(payments, APPROVED)} / {ANSWERED_RATE}", "approval"),
                span=8,
                max_val=1,
            )
        )
        .with_panel(
            timeseries(
                "p99 latency by channel",
                "99th percentile arrival-to-reply latency per channel.",
                "s",
                q(quantile(0.99, PAYMENT_LATENCY, "channel"), "{{channel}}"),
                span=8,
            )
        )
        .with_panel(
            timeseries(
                "Concurrency",
                "Payments in flight and client connections open. In flight ≈ throughput × "
                "latency (Little's law); growth without more traffic means a slowdown.",
                "short",
                q(IN_FLIGHT, "in flight"),
                q(OPEN_CONNECTIONS, "open connections"),
                span=8,
            )
        )
        .with_panel(
            timeseries(
                "Rejected requests/s by reason",
                "Requests refused before acceptance. overloaded/unavailable count against the "
                "availability SLO; the rest are client errors or an orderly drain.",
                "reqps",
                q(REJECTED_BY_REASON, "{{reason}}"),
                span=12,
            )
        )
        .with_panel(
            timeseries(
                "SLO burn rates (5m, 1h)",
                "Error ratio / error budget. Above 14.4 on both 1h and 5m pages. Full detail on "
                "the SLO dashboard.",
                TIMES,
                *(
                    q(f"payswitch:sli_{sli}:burn_rate{window}{{{RULES}}}", f"{sli} {window}")
                    for sli in ("availability", "latency")
                    for window in ("5m", "1h")
                ),
                span=12,
                steps=(("transparent", None), ("red", 14.4)),
                threshold_lines=True,
            )
        )
        .with_panel(
            timeseries(
                "Availability SLI (good / all, counted once at reply)",
                "payswitch_sli_good_payments_total over payswitch_sli_payments_total: approved "
                "or declined count as good; failed and unknown as bad.",
                "percentunit",
                q(
                    f"{sum_rate('payswitch_sli_good_payments_total')}"
                    f" / {sum_rate('payswitch_sli_payments_total')}",
                    "availability",
                ),
                span=8,
            )
        )
        .with_panel(
            timeseries(
                "Approved amount per currency (minor units/s)",
                "Business KPI: the value approved per second in each currency's minor units "
                "(cents for USD, fen for CNY, yen for JPY).",
                "short",
                q(
                    sum_rate("payswitch_approved_amount_minor_total", by_labels="currency")
                    + " > 0",
                    "{{currency}}",
                ),
                span=8,
            )
        )
        .with_panel(
            timeseries(
                "Declines by reason",
                "Declined payments per second by channel and reason code (05 do not honour, 14 "
                "invalid card, 51 insufficient funds, 54 expired, 57 not permitted, 61 over "
                "limit, 62 restricted, 65 velocity).",
                "ops",
                q(
                    sum_rate("payswitch_declines_total", by_labels="channel, reason") + " > 0",
                    "{{channel}} {{reason}}",
                ),
                span=8,
            )
        )
        .with_row(row("Workers"))
        .with_panel(
            timeseries(
                "Payments/s by worker",
                "A cluster (`payswitch serve --workers N`, docs/cluster.md): payments answered "
                "per second by each worker (instance). The shard map spreads keys evenly; one "
                "worker at 0 while the others serve is a shard down.",
                "ops",
                q(sum_rate("payswitch_payments_total", ANSWERED, by_labels="instance"),
                  "{{instance}}"),
                span=12,
            )
        )
        .with_panel(
            timeseries(
                "p99 latency by worker",
                "99th percentile arrival-to-reply latency of each worker (instance): one "
                "worker slower than the others is that worker's core, disk or shard.",
                "s",
                q(quantile(0.99, PAYMENT_LATENCY, "instance"), "{{instance}}"),
                span=12,
            )
        )
    )
