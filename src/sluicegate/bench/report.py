"""Turns a BenchResult into the JSON object (seconds) or the rich table (milliseconds) that the CLI prints."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from sluicegate.bench.runner import BenchResult
from sluicegate.bench.stats import summarise

PERCENTILE_METHOD = "linear interpolation between closest ranks (numpy default)"


def to_json_dict(result: BenchResult) -> dict[str, Any]:
    config, tally = result.config, result.measured
    tokens = tally.content_events
    wall = result.wall_s
    cpu: dict[str, dict[str, float | None]] = {}
    for pid, cpu_s in result.cpu_s.items():
        per_token = cpu_s * 1e6 / tokens if cpu_s is not None and tokens else None
        cpu[str(pid)] = {
            "cpu_s": None if cpu_s is None else round(cpu_s, 6),
            "us_per_token": None if per_token is None else round(per_token, 3),
        }
    return {
        "label": config.label,
        "url": config.url,
        "endpoint": config.endpoint.value,
        "model": config.model,
        "concurrency": config.concurrency,
        "requests_planned": config.requests,
        "warmup": config.warmup,
        "ramp_s": config.ramp_s,
        "unreachable": result.unreachable,
        "stopped_by_max_seconds": result.stopped_by_deadline,
        "wall_s": wall,
        "requests": {
            "ok": tally.ok,
            "failed": tally.failed,
            "cancelled": tally.cancelled,
            "not_started": result.not_started,
        },
        "errors": dict(sorted(tally.errors.items())),
        "tokens": {
            "content_events": tokens,
            "usage_completion_tokens": tally.usage_tokens,
            "usage_reports": tally.usage_reports,
        },
        "tokens_per_s": tokens / wall if wall > 0 else None,
        "ttft_s": summarise(tally.ttfts_s, (50, 90, 99)),
        "itl_s": summarise(tally.gaps_s, (50, 99)),
        "cpu": cpu,
        "client_cpu_s": result.client_cpu_s,
        "percentile_method": PERCENTILE_METHOD,
    }


def _ms(seconds: Any) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f}"


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def render_table(result: BenchResult, console: Console) -> None:
    data = to_json_dict(result)
    title = "sluicegate bench" + (f" — {data['label']}" if data["label"] else "")
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("target", f"{data['url']}  ({data['endpoint']}, model {data['model']})")
    if result.unreachable:
        table.add_row("status", "[red]unreachable: connection failed before any HTTP answer[/red]")
    if result.stopped_by_deadline:
        table.add_row("status", "[yellow]stopped by --max-seconds[/yellow]")
    req = data["requests"]
    table.add_row(
        "requests",
        f"ok {req['ok']}  failed {req['failed']}  cancelled {req['cancelled']}"
        f"  not started {req['not_started']}  (planned {data['requests_planned']},"
        f" concurrency {data['concurrency']}, warm-up {data['warmup']}"
        + (f", ramp {data['ramp_s']:g} s" if data["ramp_s"] else "") + ")",
    )
    errors = data["errors"]
    table.add_row("errors", "  ".join(f"{kind} {n}" for kind, n in errors.items()) if errors else "none")
    table.add_row("wall", f"{data['wall_s']:.3f} s")
    tok = data["tokens"]
    table.add_row(
        "tokens",
        f"{tok['content_events']} content events; usage completion_tokens {tok['usage_completion_tokens']}"
        f" (from {tok['usage_reports']} usage reports)",
    )
    table.add_row("tokens/s", _num(data["tokens_per_s"], ",.1f"))
    ttft = data["ttft_s"]
    table.add_row(
        "TTFT ms",
        f"p50 {_ms(ttft['p50'])}  p90 {_ms(ttft['p90'])}  p99 {_ms(ttft['p99'])}  max {_ms(ttft['max'])}"
        f"  (n={ttft['n']})",
    )
    itl = data["itl_s"]
    table.add_row(
        "inter-token ms",
        f"p50 {_ms(itl['p50'])}  p99 {_ms(itl['p99'])}  max {_ms(itl['max'])}  (n={itl['n']})",
    )
    for pid, usage in data["cpu"].items():
        table.add_row(
            f"CPU pid {pid}",
            "process gone or unreadable"
            if usage["cpu_s"] is None
            else f"{usage['cpu_s']:.3f} s, {_num(usage['us_per_token'], '.1f')} µs/token",
        )
    table.add_row("bench CPU", f"{data['client_cpu_s']:.3f} s")
    console.print(table)
