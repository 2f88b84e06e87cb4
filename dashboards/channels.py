"""payswitch / Channels and endpoints: per network endpoint, per channel, the switch's own
edges and journal, and the network simulators' own view."""

from __future__ import annotations

from grafana_foundation_sdk.builders.dashboard import Dashboard

from dashboards.panels import (
    ANY_IS_BAD,
    REJECTED_BY_REASON,
    SIMULATORS,
    RightAxis,
    frame,
    instance_variable,
    job_variable,
    q,
    quantile,
    rate,
    row,
    series,
    simulators_job_variable,
    stat,
    state_timeline,
    sum_rate,
    timeseries,
)

NETWORK_LATENCY = "payswitch_network_duration_seconds"
TIMEOUTS = "payswitch_network_timeouts_total"
JOURNAL_COMMIT = "payswitch_journal_commit_seconds"
#: Simulator outcomes counted on top of a request's decision, not instead of it.
ON_TOP = 'outcome!~"reset|late|malformed|duplicate"'


def build() -> Dashboard:
    timeouts = sum_rate(TIMEOUTS, by_labels="network")
    answered = sum_rate(f"{NETWORK_LATENCY}_count", by_labels="network")
    return (
        frame(
            "payswitch-channels",
            "payswitch / Channels and endpoints",
            "Per network endpoint: latency, timeouts, breakers, failovers, retries, admission; "
            "card stand-in and store-and-forward; per channel: results and reversals; the "
            "switch's own edges: rejections, frame errors, journal, unresolved payments; and "
            "the network simulators' own view (offered load, outcomes, faults, latency).",
            [job_variable(), instance_variable(), simulators_job_variable()],
        )
        .with_row(row("Network endpoints"))
        .with_panel(
            timeseries(
                "Network round trip p99 by network",
                "Round trip from the switch to each network endpoint (answered requests only; "
                "timeouts are counted separately).",
                "s",
                q(quantile(0.99, NETWORK_LATENCY, "network"), "{{network}} p99"),
                span=8,
            )
        )
        .with_panel(
            timeseries(
                "Network round trip p50 by network",
                "Median round trip to each network endpoint.",
                "s",
                q(quantile(0.5, NETWORK_LATENCY, "network"), "{{network}} p50"),
                span=8,
            )
        )
        .with_panel(
            timeseries(
                "Requests/s by network",
                "Requests to each network that got an answer, and those that timed out.",
                "reqps",
                q(answered, "{{network}} answered"),
                q(timeouts, "{{network}} timed out"),
                span=8,
            )
        )
        .with_panel(
            timeseries(
                "Timeouts/s by network",
                "Requests sent to a network with no answer in time: each becomes an unknown "
                "payment that the resolver must settle.",
                "reqps",
                q(timeouts, "{{network}}"),
                span=12,
            )
        )
        .with_panel(
            timeseries(
                "Timeout ratio by network",
                "Share of requests to each network that timed out.",
                "percentunit",
                q(f"{timeouts} / ({timeouts} + {answered})", "{{network}}"),
                span=12,
                min_val=0,
            )
        )
        .with_row(row("Routing and resilience"))
        .with_panel(
            state_timeline(
                "Breaker state by endpoint",
                "Circuit breaker per network endpoint (payswitch_breaker_state): closed lets "
                "calls through, open fails them fast and fails over, half-open lets a few probe "
                "calls test the endpoint. With several switch processes each has its own "
                "breakers; this shows the worst. Not closed for 5 minutes pages "
                "(PayswitchBreakerOpen).",
                q(f"max by (endpoint) ({series('payswitch_breaker_state')})", "{{endpoint}}"),
                # The gauge's values (switch/breaker.py): 0 closed, 1 half-open, 2 open.
                states={0: ("closed", "green"), 1: ("half-open", "yellow"), 2: ("open", "red")},
                steps=(("green", None), ("yellow", 1), ("red", 2)),
                span=12,
            )
        )
        .with_panel(
            timeseries(
                "Breaker transitions",
                "Breaker state changes per interval, by endpoint and from -> to state. A "
                "breaker that keeps going open -> half-open -> open is an endpoint that is "
                "still failing its probes. The series appear with an endpoint's first "
                "transition.",
                "short",
                q(
                    "sum by (endpoint, from_state, to_state) "
                    f"({rate('payswitch_breaker_transitions_total', fn='increase')})",
                    "{{endpoint}}: {{from_state}} → {{to_state}}",
                ),
                span=12,
                min_val=0,
                bars=True,
            )
        )
        .with_panel(
            timeseries(
                "Failovers/s from → to",
                "Payments moved from one endpoint of a target to the next (e.g. card-primary → "
                "card-secondary) after a failed attempt or an open breaker. The series appear "
                "with the first failover.",
                "ops",
                q(
                    sum_rate("payswitch_failovers_total", by_labels="from_endpoint, to_endpoint"),
                    "{{from_endpoint}} → {{to_endpoint}}",
                ),
                span=8,
                min_val=0,
            )
        )
        .with_panel(
            timeseries(
                "Retries/s by channel and reason",
                "Payment attempts after the first. not_sent: the request never left "
                "(connection refused, breaker open), always safe to retry; technical: the "
                "network answered with a technical error. Retries and failovers together are "
                "capped by the global retry budget.",
                "ops",
                q(
                    sum_rate("payswitch_retries_total", by_labels="channel, reason"),
                    "{{channel}} {{reason}}",
                ),
                span=8,
                min_val=0,
            )
        )
        .with_panel(
            timeseries(
                "Retries denied/s by reason",
                "Retries not made. budget: the global retry budget is spent (a retry storm "
                "averted); unsafe: the request may have reached the network, so a retry could "
                "pay twice; attempts: the attempt limit; deadline: no time left in the "
                "payment's end-to-end budget.",
                "ops",
                q(sum_rate("payswitch_retries_denied_total", by_labels="reason"), "{{reason}}"),
                span=8,
                min_val=0,
            )
        )
        .with_panel(
            timeseries(
                "Retry budget remaining",
                "Retries the global retry budget allows now, per instance: ratio x first "
                "attempts plus min_per_s x window_s over the trailing window, minus retries "
                "made. Below 1 the switch stops retrying; spent for 5 minutes with denials "
                "opens a ticket (PayswitchRetryBudgetExhausted).",
                "short",
                q(
                    f"min by (instance) ({series('payswitch_retry_budget_remaining')})",
                    "{{instance}}",
                ),
                span=8,
                min_val=0,
                steps=(("red", None), ("green", 1)),
                threshold_lines=True,
            )
        )
        .with_panel(
            timeseries(
                "Shed payments/s by endpoint",
                "Attempts refused by admission control because the endpoint already had its "
                "maximum in flight: the switch protects a slow network instead of queueing on "
                "it. The payment fails over or fails (rejected as overloaded).",
                "ops",
                q(sum_rate("payswitch_shed_payments_total", by_labels="endpoint"), "{{endpoint}}"),
                span=8,
                min_val=0,
            )
        )
        .with_panel(
            stat(
                "Route table reloads",
                "Route table reloads in the selected time range. ok: a changed table was "
                "checked and swapped in; rejected: it failed a check and the switch kept the "
                "old one (the switch log names the key path of every problem).",
                "short",
                q(
                    "sum by (result) "
                    f"(increase({series('payswitch_route_table_reloads_total')}[$__range]))",
                    "{{result}}",
                    instant=True,
                ),
                span=8,
                height=8,
                decimals=0,
                sparkline=False,
                show_names=True,
                steps_by_name={"rejected": ANY_IS_BAD},
            )
        )
        .with_row(row("Stand-in and store-and-forward"))
        .with_panel(
            timeseries(
                "Stand-in approvals/s by channel",
                "Card payments the switch approved on the issuer's behalf because every issuer "
                "endpoint was down, within the stand-in limits (per payment, per card, per "
                "issuer). Each becomes an advice in store-and-forward.",
                "ops",
                q(
                    sum_rate("payswitch_standin_approvals_total", by_labels="channel"),
                    "{{channel}}",
                ),
                span=8,
                min_val=0,
            )
        )
        .with_panel(
            timeseries(
                "Store-and-forward: waiting and delivered",
                "Advices waiting for their issuer (left axis) and advices delivered per second "
                "(right axis). Waiting should drain once the issuer is back; growing for 10 "
                "minutes opens a ticket (PayswitchStoreForwardGrowing). Quarantined/s: journal "
                "records that can never be encoded, set aside (PayswitchRecordQuarantined "
                "pages).",
                "short",
                q(
                    f"sum by (instance) ({series('payswitch_saf_depth_messages')})",
                    "{{instance}} waiting",
                ),
                q(
                    sum_rate("payswitch_saf_delivered_messages_total", by_labels="instance"),
                    "{{instance}} delivered/s",
                ),
                q(
                    sum_rate("payswitch_quarantined_records_total", by_labels="instance, kind"),
                    "{{instance}} {{kind}} quarantined/s",
                ),
                span=8,
                min_val=0,
                right_axis=RightAxis("B", "ops"),
            )
        )
        .with_panel(
            timeseries(
                "Oldest store-and-forward advice",
                "Age of the oldest advice still waiting: how long an issuer has not known about "
                "a stand-in approval. 0 when nothing waits. Over 10 minutes pages "
                "(PayswitchStoreForwardStale; the red line).",
                "s",
                q(
                    f"max by (instance) ({series('payswitch_saf_oldest_age_seconds')})",
                    "{{instance}}",
                ),
                span=8,
                min_val=0,
                steps=(("green", None), ("red", 600)),
                threshold_lines=True,
            )
        )
        .with_row(row("Channels"))
        .with_panel(
            timeseries(
                "Results/s by channel and status",
                "Payment results per channel. Failed and unknown are the errors; declines are "
                "business answers.",
                "ops",
                q(
                    sum_rate("payswitch_payments_total", by_labels="channel, status"),
                    "{{channel}} {{status}}",
                ),
                span=12,
            )
        )
        .with_panel(
            timeseries(
                "Errors/s by channel (failed, unknown)",
                "Failed: the switch could not get an answer it could act on (no route, network "
                "refused). Unknown: sent and timed out; the resolver settles it.",
                "ops",
                q(
                    sum_rate(
                        "payswitch_payments_total",
                        'status=~"failed|unknown"',
                        by_labels="channel, status",
                    ),
                    "{{channel}} {{status}}",
                ),
                span=12,
            )
        )
        .with_panel(
            timeseries(
                "Reversals/s by channel",
                "Payments reversed by the resolver after an unknown outcome (card: a reversal "
                'sent to the issuer), from payswitch_resolved_payments_total{status="reversed"}. '
                "The payment was already counted once, at reply, as unknown.",
                "ops",
                q(
                    sum_rate(
                        "payswitch_resolved_payments_total",
                        'status="reversed"',
                        by_labels="channel",
                    ),
                    "{{channel}}",
                ),
                span=8,
            )
        )
        .with_panel(
            timeseries(
                "Unresolved payments",
                "Payments whose outcome is unknown and not yet resolved. Should return to 0 "
                "within seconds; stuck above 0 for 10 minutes pages. Escalated: the channel's "
                "resolution budget is spent and an operator must act (pages at once).",
                "short",
                q(
                    f"sum by (instance) ({series('payswitch_unresolved_payments')})",
                    "{{instance}}",
                ),
                q(
                    f"sum by (instance) ({series('payswitch_unresolved_escalated_payments')})",
                    "{{instance}} escalated",
                ),
                span=8,
            )
        )
        .with_panel(
            timeseries(
                "Risk declines/s by rule",
                "Payments declined by the switch's own risk rules.",
                "ops",
                q(sum_rate("payswitch_risk_declines_total", by_labels="rule"), "{{rule}}"),
                span=8,
            )
        )
        .with_row(row("Switch edges"))
        .with_panel(
            timeseries(
                "Rejected requests/s by reason",
                "Requests refused before acceptance, by reason code.",
                "reqps",
                q(REJECTED_BY_REASON, "{{reason}}"),
                span=8,
            )
        )
        .with_panel(
            timeseries(
                "Frame errors/s by kind",
                "Frames that could not be used: malformed, invalid, too large. A burst usually "
                "means one misbehaving client. Payment errors: an unexpected error failed one "
                "payment (its id is in the log); any is a bug.",
                "reqps",
                q(sum_rate("payswitch_frame_errors_total", by_labels="kind"), "{{kind}}"),
                q(sum_rate("payswitch_payment_errors_total"), "payment errors (switch bug)"),
                span=8,
            )
        )
        .with_panel(
            timeseries(
                "Replays, AML flags, recoveries",
                "Requests answered from the idempotency index, payments at or above the AML "
                "threshold, and unfinished payments resolved after a restart.",
                "short",
                q(sum_rate("payswitch_idempotent_replays_total"), "idempotent replays/s"),
                q(sum_rate("payswitch_aml_flagged_payments_total"), "AML flagged/s"),
                q(
                    f"sum(increase({series('payswitch_recovered_payments_total')}[$__range]))",
                    "recovered at start-up (in range)",
                ),
                span=8,
            )
        )
        .with_row(row("Journal"))
        .with_panel(
            timeseries(
                "Journal commit latency",
                "Time to commit one batch durably (fsync). p99 above 50 ms for 5 minutes opens "
                "a ticket.",
                "s",
                q(quantile(0.5, JOURNAL_COMMIT, "instance"), "{{instance}} p50"),
                q(quantile(0.99, JOURNAL_COMMIT, "instance"), "{{instance}} p99"),
                span=8,
                steps=(("transparent", None), ("red", 0.05)),
                threshold_lines=True,
            )
        )
        .with_panel(
            timeseries(
                "Journal batch size",
                "Records per commit: group commit amortizes one fsync over this many records. "
                "Grows with load.",
                "short",
                q(
                    f"{sum_rate('payswitch_journal_batch_records_sum', by_labels='instance')}"
                    f" / {sum_rate('payswitch_journal_batch_records_count', by_labels='instance')}",
                    "{{instance}} mean",
                ),
                q(
                    quantile(0.99, "payswitch_journal_batch_records", "instance"),
                    "{{instance}} p99",
                ),
                span=8,
            )
        )
        .with_panel(
            timeseries(
                "Journal pending records and commits/s",
                "Records waiting for the writer (sampled after each commit) and commits per "
                "second.",
                "short",
                q(
                    f"sum by (instance) ({series('payswitch_journal_pending_records')})",
                    "{{instance}} pending",
                ),
                q(
                    sum_rate(f"{JOURNAL_COMMIT}_count", by_labels="instance"),
                    "{{instance}} commits/s",
                ),
                span=8,
            )
        )
        .with_row(row("Network simulators (demo and tests)"))
        .with_panel(
            timeseries(
                "Offered load by network (simulators)",
                "Requests each simulated network received per second, from the simulators' own "
                "/metrics (channels_requests_total; job chosen by the Simulators job variable). "
                "The reset, late, malformed and duplicate outcomes are left out: they are "
                "counted on top of a request's decision, not instead of it.",
                "reqps",
                q(
                    sum_rate(
                        "channels_requests_total", ON_TOP, by_labels="network", labels=SIMULATORS
                    ),
                    "{{network}}",
                ),
                span=8,
                min_val=0,
            )
        )
        .with_panel(
            timeseries(
                "Simulator requests/s by network and outcome",
                "What each simulated network did with its requests: approved, declined, error, "
                "status, reversal, advice (answers); refused, blackhole, overloaded (faults and "
                "capacity); reset, late, malformed, duplicate (counted on top of the answer). "
                "Outcomes at 0 are hidden.",
                "reqps",
                q(
                    sum_rate(
                        "channels_requests_total", by_labels="network, outcome", labels=SIMULATORS
                    )
                    + " > 0",
                    "{{network}} {{outcome}}",
                ),
                span=8,
                min_val=0,
            )
        )
        .with_panel(
            state_timeline(
                "Active faults by network",
                "Faults active now on each simulated network (scheduled in the simulators' "
                "config or injected with `payswitch fault` / POST /faults). Compare with the "
                "breaker states above.",
                q(
                    f"sum by (network) ({series('channels_active_faults', labels=SIMULATORS)})",
                    "{{network}}",
                ),
                states={0: ("none", "green")},
                steps=ANY_IS_BAD,
                span=8,
            )
        )
        .with_panel(
            timeseries(
                "Simulator latency by network (p50, p99)",
                "Delay each simulated network applied before answering (service time plus any "
                "late fault): the network's share of the switch's round trip above.",
                "s",
                q(
                    quantile(0.5, "channels_latency_seconds", "network", labels=SIMULATORS),
                    "{{network}} p50",
                ),
                q(
                    quantile(0.99, "channels_latency_seconds", "network", labels=SIMULATORS),
                    "{{network}} p99",
                ),
                span=12,
                min_val=0,
            )
        )
        .with_panel(
            timeseries(
                "Simulator connections by network",
                "Connections open on each simulated network (the switch's adapters and probes).",
                "short",
                q(
                    f"sum by (network) ({series('channels_connections', labels=SIMULATORS)})",
                    "{{network}}",
                ),
                span=12,
                min_val=0,
            )
        )
        .with_panel(
            timeseries(
                "Simulator settlements pending by network",
                "Payments a simulated network accepted and has yet to settle (SWIFT's ACSC "
                "comes its settlement delay later). Growing without falling back: the "
                "network's settlement is stuck, and the next settlement files will lack "
                "those payments.",
                "short",
                q(
                    "sum by (network) "
                    f"({series('channels_settlements_pending', labels=SIMULATORS)})",
                    "{{network}}",
                ),
                span=12,
                min_val=0,
            )
        )
    )
