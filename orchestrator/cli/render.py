"""Readable terminal output for run and dry-run results."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from orchestrator.output import console as stdout_console
from orchestrator.pipeline import RunResult


def print_run(result: RunResult) -> None:
    console = stdout_console()
    data = result.to_dict()
    title = "dry run" if result.dry_run else f"run {result.run_id}" + (" (continued)" if result.resumed else "")
    console.print(f"[bold]{result.campaign}[/bold] — {title} at {result.at.isoformat()}")
    console.print(
        f"audience {data['audience']}  control {data['control']}  messages {data['messages']}"
        + (f"  deferred {data['deferred']}" if data["deferred"] else "")
    )
    if data["conditions"]:
        table = Table("condition", "keeps alone", "keeps cumulatively", title="segment funnel")
        for c in data["conditions"]:
            table.add_row(c["condition"], str(c["alone"]), str(c["cumulative"]))
        console.print(table)
    table = Table("step", "audience", "channels", "offers issued", "withheld", "face value", title="steps")
    for s in data["steps"]:
        channels = ", ".join(f"{k} {v}" for k, v in s["channels"].items()) or "-"
        withheld = ", ".join(f"{k} {v}" for k, v in s["offers"]["withheld"].items()) or "-"
        table.add_row(
            s["name"],
            str(s["audience"]),
            channels,
            str(s["offers"]["issued"]),
            withheld,
            str(s["offers"]["face_value"]),
        )
    console.print(table)
    if data["deferred"]:
        _print_deferred(console, data, result)
    if data["skipped"]:
        table = Table("reason", "customers", title="skipped")
        for reason, n in sorted(data["skipped"].items()):
            table.add_row(reason, str(n))
        console.print(table)
    if data["sms_segments"]:
        console.print(f"sms segments {data['sms_segments']}")
    if data["cost"]:
        costs = ", ".join(f"{channel} {amount}" for channel, amount in data["cost"].items())
        console.print(f"estimated send cost: {costs} ({data['currency']})")
    for f in data.get("follow_ups", []):
        due = f["due"].astimezone(result.timezone).isoformat() if result.timezone else f["due"].isoformat()
        if f["audience"] == "pending":
            console.print(
                f"follow-up {f['name']}: not yet due (from {due}, {f['after']} after each message);"
                " the scheduler or `orchestrator dispatch` sends it when due",
                highlight=False,
            )
        elif f["audience"] == "due":
            console.print(
                f"follow-up {f['name']}: due since {due}; `orchestrator dispatch` or the scheduler plans and sends it",
                highlight=False,
            )
        else:
            console.print(f"follow-up {f['name']} (due {due}): expected audience {f['audience']}", highlight=False)
    if not result.dry_run:
        console.print("outcomes: " + (", ".join(f"{k} {v}" for k, v in data["outcomes"].items()) or "none"))
    for sample in data["samples"]:
        console.rule(f"sample: {sample['customer_id']} via {sample['channel']} ({sample['step']})")
        parts = sample["parts"]
        for part, text in parts.items():
            if part == "html" and "text" in parts:  # the text part says the same, readably
                console.print(f"[bold]html[/bold] ({len(text.encode())} bytes)", highlight=False)
                continue
            console.print(f"[bold]{part}[/bold]", highlight=False)
            console.print(text if len(text) < 2000 else text[:2000] + " …", highlight=False, markup=False)


def _print_deferred(console: Console, data: dict, result: RunResult) -> None:
    """Messages held back by quiet hours: not in ``messages``, but they will go out, so say how many and when."""
    verb = "would be deferred" if result.dry_run else "deferred"
    console.print(f"{verb} by quiet hours: {data['deferred']} messages", highlight=False)
    for s in data["steps"]:
        if s["deferred"]:
            console.print(f"  step {s['name']}: " + ", ".join(f"{k} {v}" for k, v in s["deferred"].items()))
    window = data["deferred_until"]
    if window:
        zone = str(result.timezone or "UTC")
        earliest, latest = (window[k].strftime("%Y-%m-%d %H:%M") for k in ("earliest", "latest"))
        console.print(f"  earliest {earliest}, latest {latest} ({zone})", highlight=False)
        console.print("  `orchestrator dispatch` sends each one when its time has come", highlight=False)
