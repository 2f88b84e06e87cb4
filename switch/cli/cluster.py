"""``payswitch cluster``: the files the engines in front of a cluster read."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from switch.cli.errors import UserError

if TYPE_CHECKING:
    from switch.cluster.layout import ClusterLayout


@click.group()
def cluster() -> None:
    """A cluster of switch workers (`payswitch serve --workers N`): HAProxy's config,
    Prometheus's targets, the shard of a key. See docs/cluster.md."""


def _layout(path: str) -> ClusterLayout:
    from switch.cluster.layout import load_layout
    from switch.serve.config import ConfigError

    try:
        return load_layout(path)
    except ConfigError as exc:
        raise UserError(str(exc)) from None


@cluster.command("haproxy-config")
@click.option("--layout", "layout_path", required=True, type=click.Path(dir_okay=False),
              help="The cluster's layout.json (written by `serve --workers N`).")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="Where to write haproxy.cfg (per-shard 503 bodies go beside it).")
@click.option("--bind", default="127.0.0.1:8080", show_default=True,
              help="HAProxy's payments address (host:port).")
@click.option("--maxconn", type=click.IntRange(1, 1_000_000), default=4096, show_default=True,
              help="HAProxy global maxconn (it needs about 2 file descriptors each).")
@click.option("--stats-bind", default=None,
              help="Also serve HAProxy's stats page and Prometheus exporter here.")
@click.option("--iso8583-bind", default=None,
              help="Also front the workers' ISO 8583 doors here (TCP, sticky by acquirer "
              "address: balance source).")
def haproxy_config(layout_path: str, out_path: str, bind: str, maxconn: int,
                   stats_bind: str | None, iso8583_bind: str | None) -> None:
    """Write HAProxy's config: route POST /v1/payments by crc32(Idempotency-Key) mod N to
    the owning worker, health-checked on /readyz; a down shard answers 503 unavailable."""
    from switch.cluster.haproxy import write_config

    layout = _layout(layout_path)
    try:
        path = write_config(layout, out_path, bind=bind, maxconn=maxconn, stats_bind=stats_bind,
                            iso8583_bind=iso8583_bind)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    click.echo(f"wrote {path} ({len(layout.workers)} shards); run: haproxy -f {path}")


@cluster.command("prometheus-targets")
@click.option("--layout", "layout_path", required=True, type=click.Path(dir_okay=False))
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False))
def prometheus_targets(layout_path: str, out_path: str) -> None:
    """Write Prometheus file-SD targets (one per worker's /metrics, labelled by shard)."""
    from switch.cluster.filesd import write_file_sd

    click.echo(f"wrote {write_file_sd(_layout(layout_path), out_path)}")


@cluster.command("shard")
@click.option("--layout", "layout_path", required=True, type=click.Path(dir_okay=False))
@click.argument("keys", nargs=-1, required=True)
def shard(layout_path: str, keys: tuple[str, ...]) -> None:
    """Print the shard and owner of each idempotency key."""
    layout = _layout(layout_path)
    for key in keys:
        owner = layout.shard_map.owner(key)
        click.echo(f"{key}\tshard {owner}\t{layout.workers[owner].address}")
