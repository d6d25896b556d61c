"""Benchmark: the e-mail channel's render path and SMTP sending, each against a reference measured in the same run.

1. Render: ``--messages`` (20,000) personalised e-mails from ``benchmarks/email_bench.html.j2`` (10 KB, a
   ``<style>`` block, table layout) through the channel: ``compile`` once (flatten, premailer once, lint), then per
   customer ``render`` (HTML with CSS inlined, derived text, subject, preheader, headers) and the MIME bytes exactly
   as ``send`` builds them (``EmailChannel._envelope``). References in the same run:
   * plain Jinja2 (``jinja2.Environment(autoescape=True)``, not sandboxed) rendering the same template for the same
     contexts, against the channel rendering the message's HTML from its compiled (CSS-inlined, cached) template:
     **target: channel time ÷ Jinja2 time ≤ 1.5** (``--render-target``). The whole path (HTML, the text part
     derived from it, subject, preheader, MIME bytes) is reported beside it: that is more work than Jinja2 alone
     does, so it has no target of its own;
   * premailer on every message: the same channel path (render, text, subject, preheader, MIME) with the HTML
     template as written and premailer run on each rendered body instead of once per template version, measured on
     ``--premailer-sample`` (300) messages and extrapolated as a rate: **target: channel speed-up ≥ 20×**
     (``--speedup-target``). Also shown: plain Jinja2 + premailer alone per message (no text part, no MIME).
   Extra figures: the channel's ``render`` alone (no MIME); plain Jinja2 rendering the four templates the channel
   renders (inlined HTML, derived text, subject, preheader), i.e. the same template work without the sandbox.
2. Send: ``--smtp-messages`` (10,000) messages to an aiosmtpd server in a separate process (its handler accepts and
   discards), through ``EmailChannel.send`` (SMTP provider, batches of ``--batch`` = 500, one connection), beside a
   plain ``smtplib`` loop sending the same already-built bytes over one connection to the same server: **target:
   channel rate ÷ smtplib rate ≥ 0.8** (``--send-target``). Each side runs ``--runs`` (2) times, alternating;
   the best run of each counts.

Both sides of each comparison are checked to agree first (same rendered HTML modulo inlined styles; every message
sent and received). Run: ``.venv/bin/python benchmarks/bench_email.py`` (about a minute on 2 cores). Exit status:
0 when every target is met, 1 when one is missed or on errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
import premailer

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, BenchmarkError, heading, rate, ratio, secs, step, stop_on_sigterm, table
from orchestrator_plugins.email import EmailChannel, EmailOptions
from orchestrator_plugins.email import inline as email_inline
from orchestrator_plugins.email.smtp import Envelope

from orchestrator.api import OutgoingMessage, SendStatus
from orchestrator.config import Settings
from orchestrator.rendering import TemplateLoader, synthetic_context
from orchestrator.template_context import register_filters
from orchestrator.timeutil import zone
from orchestrator.unsubscribe import unsubscribe_url

BENCH = Path(__file__).resolve().parent
TEMPLATE = "email_bench.html.j2"
OPTIONS_TEXT = (
    "{{ customer.name }}，本季新菜单上线，送您一张 {{ offer.description }} 券",
    "券码 {{ offer.code }}，{{ offer.expires_at|date }} 前有效",
)
OPTIONS = {
    "subject": OPTIONS_TEXT[0],
    "preheader": OPTIONS_TEXT[1],
    "template": TEMPLATE,
}
SENDER = "某网店 <members@shop.example.com>"
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平"


def contexts(count: int) -> list[dict[str, Any]]:
    """``count`` personalised contexts (names, ids, codes, signed unsubscribe links), built before any timing."""
    base = synthetic_context(True, campaign_name="spring-menu")
    key = b"bench-secret-key"
    result = []
    for i in range(count):
        customer_id = f"C{i:07d}"
        customer = {
            **base["customer"],
            "customer_id": customer_id,
            "name": SURNAMES[i % 20] + GIVEN[(i // 20) % 20],
            "email": f"member{i}@example.com",
            "frequency": 1 + i % 17,
            "tier": "vip" if i % 7 == 0 else "regular",
            "tags": ["newsletter", "lunch"] if i % 3 else ["vip"],
        }
        offer = {**base["offer"], "code": f"SPR{i:06d}"}
        url = unsubscribe_url("https://shop.example.com/unsubscribe", key, customer_id, "email")
        result.append({**base, "customer": customer, "offer": offer, "unsubscribe_url": url})
    return result


class PremailerEach:
    """The HTML template as written, with premailer run on every rendered body (what the cache avoids)."""

    def __init__(self, original: Any):
        self.original = original

    def render(self, context: Any) -> str:
        return email_inline.run_premailer(self.original.render(context))


def best(runs: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    """The fastest of ``runs`` runs (garbage collected between them) and the last run's result."""
    times, result = [], None
    for _ in range(runs):
        gc.collect()
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return min(times), result


# --- 1. render ------------------------------------------------------------------------------------------------


def bench_render(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    settings = Settings(base_dir=str(scratch), channels={"email": {"from": SENDER, "outbox": "out"}})
    channel = EmailChannel(settings.channels["email"], settings)
    loader = TemplateLoader([BENCH], currency=settings.currency, tz=settings.tz)
    with step(f"building {args.messages:,} personalised contexts"):
        ctxs = contexts(args.messages)

    plain_env = jinja2.Environment(loader=jinja2.FileSystemLoader(BENCH), autoescape=True)
    register_filters(plain_env, currency=settings.currency, tz=settings.tz or zone("Asia/Shanghai"))
    plain = plain_env.get_template(TEMPLATE)

    def reference() -> int:
        return sum(len(plain.render(ctx)) for ctx in ctxs)  # each body dropped at once, as the channel's are

    def channel_path() -> int:
        compiled = channel.compile(EmailOptions.model_validate(OPTIONS), loader)  # premailer once (cold cache)
        size = 0
        for i, ctx in enumerate(ctxs):
            rendered = channel.render(compiled, ctx)
            message = OutgoingMessage(i, ctx["customer"]["customer_id"], ctx["customer"]["email"], rendered, f"k{i}")
            envelope = channel._envelope(message)
            size += len(envelope.data)  # type: ignore[union-attr]
        return size

    compiled = channel.compile(EmailOptions.model_validate(OPTIONS), loader)

    def render_only() -> None:
        for ctx in ctxs:
            channel.render(compiled, ctx)

    def html_only() -> int:
        html = compiled.templates["html"]
        return sum(len(html.render(ctx)) for ctx in ctxs)

    # both sides render the same content: the channel's HTML is the reference's with styles moved into attributes
    sample = channel.render(compiled, ctxs[1])
    for needle in (ctxs[1]["customer"]["name"], ctxs[1]["offer"]["code"], "查找附近门店", "token="):
        if needle not in sample.parts["html"] or needle.replace("token=", "") not in plain.render(ctxs[1]):
            raise BenchmarkError(f"the channel and plain Jinja2 disagree about {needle!r}")
    if "<style" in sample.parts["html"].split("@media")[0] and "style=" not in sample.parts["html"]:
        raise BenchmarkError("the channel's HTML was not inlined")

    with step("plain Jinja2 render (reference), the channel's HTML render and its whole path, alternating"):
        reference_time, html_time, channel_time = float("inf"), float("inf"), float("inf")
        for _ in range(args.runs):
            reference_time = min(reference_time, best(1, reference)[0])
            html_time = min(html_time, best(1, html_only)[0])
            elapsed, total_bytes = best(1, channel_path)
            channel_time = min(channel_time, elapsed)
    with step("the channel's render alone"):
        render_time, _ = best(args.runs, render_only)
    # the same work in plain Jinja2: the four templates the channel renders (inlined HTML, derived text, subject,
    # preheader), not sandboxed; shows what the sandbox and the channel's own code add
    source = (BENCH / TEMPLATE).read_text(encoding="utf-8")
    inlined = email_inline.prepare(email_inline.flatten(source, lambda name: (BENCH / name).read_text()))
    four = [plain_env.from_string(source) for source in (inlined.html, inlined.text or "", *OPTIONS_TEXT)]

    def four_plain() -> None:
        for ctx in ctxs:
            for template in four:
                template.render(ctx)

    with step("plain Jinja2, the four templates the channel renders"):
        four_time, _ = best(args.runs, four_plain)

    sample_size = min(args.premailer_sample, len(ctxs))
    sample_ctxs = ctxs[:sample_size]
    # the channel's path as it would be without the cache: premailer on every rendered HTML body
    per_message = dataclasses.replace(
        compiled, templates={**compiled.templates, "html": PremailerEach(compiled.templates["html"].original)}
    )

    def premailer_each() -> None:
        for i, ctx in enumerate(sample_ctxs):
            message = OutgoingMessage(i, "C", ctx["customer"]["email"], channel.render(per_message, ctx), f"k{i}")
            channel._envelope(message)

    with step(f"premailer on every message ({sample_size} messages): channel path, and plain Jinja2 + premailer"):
        premailer_time, _ = best(1, premailer_each)
        bare_premailer_time, _ = best(
            1, lambda: [premailer.transform(plain.render(ctx), allow_network=False) for ctx in sample_ctxs]
        )
    n = len(ctxs)
    return {
        "n": n,
        "template_bytes": (BENCH / TEMPLATE).stat().st_size,
        "html_bytes": len(sample.parts["html"].encode()),
        "mime_bytes": total_bytes / n,
        "reference": reference_time,
        "html": html_time,
        "channel": channel_time,
        "render": render_time,
        "premailer_rate": sample_size / premailer_time,
        "bare_premailer_rate": sample_size / bare_premailer_time,
        "four": four_time,
        "premailer_n": sample_size,
    }


# --- 2. send --------------------------------------------------------------------------------------------------

SERVER = """
import asyncio, sys
from aiosmtpd.controller import Controller

class Discard:
    async def handle_DATA(self, server, session, envelope):
        return "250 2.0.0 Ok: discarded"

controller = Controller(Discard(), hostname="127.0.0.1", port=int(sys.argv[1]))
controller.start()
print("ready", flush=True)
sys.stdin.read()  # until the benchmark closes our stdin
controller.stop()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bench_send(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        if server.stdout is None or server.stdout.readline().strip() != "ready":
            raise BenchmarkError("the aiosmtpd server process did not start")
        return _bench_send(args, scratch, port)
    finally:
        if server.stdin is not None:
            server.stdin.close()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _bench_send(args: argparse.Namespace, scratch: Path, port: int) -> dict[str, Any]:
    smtp = {"host": "127.0.0.1", "port": port, "security": "none", "timeout": 30}
    settings = Settings(
        base_dir=str(scratch),
        unsubscribe_url="https://shop.example.com/unsubscribe",
        channels={"email": {"from": SENDER, "smtp": smtp}},
    )
    loader = TemplateLoader([BENCH], currency=settings.currency, tz=settings.tz)
    n = args.smtp_messages
    with step(f"rendering {n:,} messages for sending"):
        builder = EmailChannel(settings.channels["email"], settings)
        compiled = builder.compile(EmailOptions.model_validate(OPTIONS), loader)
        outgoing = [
            OutgoingMessage(i, ctx["customer"]["customer_id"], ctx["customer"]["email"], builder.render(compiled, ctx))
            for i, ctx in enumerate(contexts(n))
        ]
        for i, message in enumerate(outgoing):
            message.idempotency_key = f"bench-{i}"
        built = [builder._envelope(message) for message in outgoing]  # the reference sends these bytes
        if not all(isinstance(item, Envelope) for item in built):
            raise BenchmarkError("a message could not be built")

    def channel_send() -> int:
        channel = EmailChannel(settings.channels["email"], settings)
        sent = 0
        for start in range(0, n, args.batch):
            sent += sum(r.status is SendStatus.SENT for r in channel.send(outgoing[start : start + args.batch]))
        channel.close()
        return sent

    def smtplib_loop() -> int:
        conn = smtplib.SMTP("127.0.0.1", port, timeout=30)
        sent = 0
        for envelope in built:
            conn.sendmail(envelope.sender, [envelope.recipient], envelope.data)  # type: ignore[union-attr]
            sent += 1
        conn.quit()
        return sent

    with step(f"sending {n:,} messages: smtplib loop and channel send, alternating, {args.runs} runs each"):
        reference_time, channel_time = float("inf"), float("inf")
        for _ in range(args.runs):
            elapsed, sent = best(1, smtplib_loop)
            reference_time = min(reference_time, elapsed)
            if sent != n:
                raise BenchmarkError(f"smtplib sent {sent} of {n}")
            elapsed, sent = best(1, channel_send)
            channel_time = min(channel_time, elapsed)
            if sent != n:
                raise BenchmarkError(f"the channel sent {sent} of {n}")
    size = sum(len(e.data) for e in built) / n  # type: ignore[union-attr]
    return {"n": n, "bytes": size, "reference": reference_time, "channel": channel_time}


# --- report ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000, help="messages rendered (default 20,000)")
    parser.add_argument("--premailer-sample", type=int, default=300, help="messages run through premailer (300)")
    parser.add_argument("--smtp-messages", type=int, default=10_000, help="messages sent over SMTP (default 10,000)")
    parser.add_argument("--batch", type=int, default=500, help="messages per send() call (default 500)")
    parser.add_argument("--runs", type=int, default=2, help="alternating runs of each side; the best counts (2)")
    parser.add_argument("--render-target", type=float, default=1.5, help="highest channel ÷ Jinja2 time (1.5)")
    parser.add_argument("--speedup-target", type=float, default=20, help="lowest speed-up over premailer (20)")
    parser.add_argument("--send-target", type=float, default=0.8, help="lowest channel ÷ smtplib rate (0.8)")
    args = parser.parse_args(argv)
    if min(args.messages, args.premailer_sample, args.smtp_messages, args.batch, args.runs) < 1:
        parser.error("counts must be at least 1")
    stop_on_sigterm()
    print(f"bench_email: {(BENCH / TEMPLATE).relative_to(REPO)}, Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="orch-bench-email-") as scratch:
        r = bench_render(args, Path(scratch))
        s = bench_send(args, Path(scratch))

    checks = []
    heading(
        f"Render: {r['n']:,} personalised e-mails, template {r['template_bytes'] / 1024:.1f} KiB "
        f"(inlined HTML {r['html_bytes'] / 1024:.1f} KiB, MIME {r['mime_bytes'] / 1024:.1f} KiB per message)"
    )
    render_ratio = r["html"] / r["reference"]
    speedup = (r["n"] / r["channel"]) / r["premailer_rate"]
    rows = [
        ["plain Jinja2 render (reference)", secs(r["reference"]), rate(r["n"], r["reference"]), "1.00×"],
        [
            "channel HTML render, CSS inlined once per template",
            secs(r["html"]),
            rate(r["n"], r["html"]),
            f"{render_ratio:.2f}×",
        ],
        [
            "channel compile + all parts + MIME bytes",
            secs(r["channel"]),
            rate(r["n"], r["channel"]),
            ratio(r["channel"], r["reference"]),
        ],
        [
            "channel render only (no MIME)",
            secs(r["render"]),
            rate(r["n"], r["render"]),
            ratio(r["render"], r["reference"]),
        ],
        [
            "plain Jinja2, the channel's four templates",
            secs(r["four"]),
            rate(r["n"], r["four"]),
            ratio(r["four"], r["reference"]),
        ],
        [
            f"channel path, premailer per message ({r['premailer_n']} measured)",
            secs(r["n"] / r["premailer_rate"]),
            f"{r['premailer_rate']:,.0f}/s",
            ratio(r["n"] / r["premailer_rate"], r["reference"]),
        ],
        [
            f"plain Jinja2 + premailer per message ({r['premailer_n']} measured)",
            secs(r["n"] / r["bare_premailer_rate"]),
            f"{r['bare_premailer_rate']:,.0f}/s",
            ratio(r["n"] / r["bare_premailer_rate"], r["reference"]),
        ],
    ]
    print(table(["path", "time", "messages/s", "time ÷ Jinja2"], rows, right=(1, 2, 3)))
    checks.append(
        (
            f"channel HTML render ÷ plain Jinja2 time {render_ratio:.2f}× ≤ {args.render_target}",
            render_ratio <= args.render_target,
        )
    )
    checks.append(
        (
            f"speed-up over premailer per message {speedup:.0f}× ≥ {args.speedup_target:.0f}×",
            speedup >= args.speedup_target,
        )
    )

    heading(f"Send: {s['n']:,} messages ({s['bytes'] / 1024:.1f} KiB each) to aiosmtpd in another process")
    send_ratio = s["reference"] / s["channel"]
    rows = [
        [
            "smtplib loop, prebuilt bytes, one connection (reference)",
            secs(s["reference"]),
            rate(s["n"], s["reference"]),
            "100 %",
        ],
        [
            f"EmailChannel.send (SMTP), batches of {args.batch}",
            secs(s["channel"]),
            rate(s["n"], s["channel"]),
            f"{send_ratio:.0%}",
        ],
    ]
    print(table(["path", "time", "messages/s", "rate ÷ smtplib"], rows, right=(1, 2, 3)))
    checks.append(
        (f"channel send rate {send_ratio:.0%} of smtplib ≥ {args.send_target:.0%}", send_ratio >= args.send_target)
    )

    print()
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}: {text}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchmarkError as exc:
        print(f"\nbench_email: error: {exc}", file=sys.stderr)
        sys.exit(1)
