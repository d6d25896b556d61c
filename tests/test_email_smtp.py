"""The email channel over SMTP, against real aiosmtpd servers on loopback (no mocks of smtplib).

Each test starts its own server on a free port with a recording handler: what the server received (envelope and
bytes), on how many connections, which replies it gave. Covered: a batch over one connection with the outbox's
exact bytes, refused recipients (550 / 451), a connection dropped mid-batch and between batches, AUTH with the
password from the environment (right and wrong), STARTTLS and implicit TLS with a self-signed certificate made by
``openssl``, timeouts, an unreachable server, config validation, and ``orchestrator run`` end to end.
"""

from __future__ import annotations

import asyncio
import email.policy
import hashlib
import json
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.parser import BytesParser
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from orchestrator_plugins.email import EmailChannel, EmailOptions
from sqlalchemy import Engine, select

from orchestrator.api import OutgoingMessage, SendStatus
from orchestrator.config import Settings, load_settings
from orchestrator.db.models import Customer, Delivery
from orchestrator.errors import InputError, RuntimeFailure
from orchestrator.rendering import TemplateLoader, synthetic_context
from tests import dataset
from tests.clitools import Cli
from tests.dataset import AT

SENDER = "好店 <shop@example.com>"
UNSUBSCRIBE = "https://shop.example.com/unsubscribe"
PASSWORD_ENV = "ORCH_TEST_SMTP_PASSWORD"

# AUTH without TLS is what the plain-text tests exercise on purpose (loopback only)
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")


# --- the server -------------------------------------------------------------------------------------------------


@dataclass
class Received:
    peer: tuple
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    reply: str
    login: str | None

    @property
    def parsed(self):
        return BytesParser(policy=email.policy.default).parsebytes(self.content)


class Recorder:
    """An aiosmtpd handler that records what it accepts; it can refuse, drop the connection or stall."""

    def __init__(self, refuse: dict[str, str] | None = None, drop_after: int | None = None, delay: float = 0):
        self.refuse = refuse or {}
        self.drop_after = drop_after  # close the connection instead of answering the next DATA
        self.delay = delay  # seconds before answering DATA
        self.messages: list[Received] = []
        self.peers: set[tuple] = set()  # one per connection that began a transaction
        self.transports: list[asyncio.BaseTransport] = []
        self.quits = 0
        self.tls_peers: set[tuple] = set()

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        self.peers.add(session.peer)
        if server.transport.get_extra_info("ssl_object") is not None:  # STARTTLS or implicit TLS
            self.tls_peers.add(session.peer)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.drop_after is not None and len(self.messages) >= self.drop_after:
            server.transport.close()
            return "421 closing"  # never reaches the client: the transport is closed
        reply = f"250 2.0.0 Ok: queued as Q{len(self.messages) + 1:04d}"
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        self.messages.append(
            Received(session.peer, envelope.mail_from, list(envelope.rcpt_tos), envelope.content, reply, login)
        )
        self.transports.append(server.transport)
        return reply

    async def handle_QUIT(self, server, session, envelope):
        self.quits += 1
        return "221 Bye"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def smtp_server(handler: Recorder, **kwargs) -> Iterator[Controller]:
    port = kwargs.pop("port", None) or free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()


def authenticator(expected_password: str):
    def check(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and auth_data.login == b"mailer"
        ok = ok and auth_data.password == expected_password.encode()
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    return check


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with the openssl command line."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed: cannot make a certificate for the TLS tests")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"]
    command += ["-keyout", str(key), "-out", str(cert), "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]
    subprocess.run(command, check=True, capture_output=True)
    return cert, key


def server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*map(str, certificate))
    return context


# --- the client side --------------------------------------------------------------------------------------------


def make_channel(tmp_path: Path, port: int, **smtp) -> EmailChannel:
    smtp = {"host": "127.0.0.1", "port": port, "security": "none", "timeout": 5, **smtp}
    settings = Settings(
        base_dir=str(tmp_path), unsubscribe_url=UNSUBSCRIBE, channels={"email": {"from": SENDER, "smtp": smtp}}
    )
    return EmailChannel(settings.channels["email"], settings)


def messages(channel: EmailChannel, tmp_path: Path, count: int, prefix: str = "run1") -> list[OutgoingMessage]:
    templates = TemplateLoader([tmp_path / "templates"]).for_campaign(tmp_path / "campaigns" / "smtp.yaml")
    options = EmailOptions.model_validate(
        {"subject": "{{ customer.name }}，您的专属优惠", "html": "<p>{{ customer.name }}：券码 {{ offer.code }}</p>"}
    )
    rendered = channel.render(channel.compile(options, templates), synthetic_context(True, campaign_name="smtp"))
    return [
        OutgoingMessage(
            delivery_id=i,
            customer_id=f"C{i:03d}",
            contact=f"c{i}@example.com",
            message=rendered,
            idempotency_key=f"{prefix}-d{i}",
        )
        for i in range(1, count + 1)
    ]


def comparable(data: bytes) -> bytes:
    """The MIME bytes without what differs between two builds: the Date, the random part boundary, line ends."""
    data = re.sub(rb"(?m)^Date: .*\n", b"", data.replace(b"\r\n", b"\n")).rstrip(b"\n")
    boundary = re.search(rb'boundary="([^"]+)"', data)
    return data.replace(boundary.group(1), b"BOUNDARY") if boundary else data


# --- tests ------------------------------------------------------------------------------------------------------


def test_a_batch_goes_over_one_connection_with_the_outbox_bytes(tmp_path: Path):
    handler = Recorder()
    with smtp_server(handler) as server:
        channel = make_channel(tmp_path, server.port)
        batch = messages(channel, tmp_path, 5)
        results = list(channel.send(batch))
        again = list(channel.send(batch[:1]))  # the next batch reuses the connection
        channel.close()

    assert [r.status for r in results + again] == [SendStatus.SENT] * 6
    assert [r.provider_id for r in results] == [f"250 2.0.0 Ok: queued as Q{i:04d}" for i in range(1, 6)]
    assert len(handler.peers) == 1 and handler.quits == 1

    outbox_settings = Settings(base_dir=str(tmp_path), channels={"email": {"from": SENDER, "outbox": "out"}})
    outbox = EmailChannel(outbox_settings.channels["email"], outbox_settings)
    files = [tmp_path / "out" / r.provider_id for r in list(outbox.send(batch))]
    for message, received, file in zip(batch, handler.messages, files, strict=False):
        assert received.mail_from == "shop@example.com" and received.rcpt_tos == [message.contact]
        assert comparable(received.content) == comparable(file.read_bytes())  # the same builder, same bytes
        parsed = received.parsed
        assert parsed["Subject"] == "张伟，您的专属优惠"
        assert parsed["To"] == message.contact
        assert parsed["From"].addresses[0].display_name == "好店"
        assert parsed.get_body(("plain",)).get_content().strip() == "张伟：券码 SYN7-Q2KX-8ZD4"
        assert parsed.get_body(("html",)).get_content().strip() == "<p>张伟：券码 SYN7-Q2KX-8ZD4</p>"
        digest = hashlib.sha256(message.idempotency_key.encode()).hexdigest()[:32]
        assert parsed["Message-ID"] == f"<{digest}@example.com>"
    assert handler.messages[5].parsed["Message-ID"] == handler.messages[0].parsed["Message-ID"]  # stable per key


def test_refused_recipients_are_permanent_or_transient_with_the_servers_text(tmp_path: Path):
    refuse = {"c2@example.com": "550 5.1.1 No such user", "c4@example.com": "451 4.3.0 Mailbox busy, try later"}
    handler = Recorder(refuse=refuse)
    with smtp_server(handler) as server:
        channel = make_channel(tmp_path, server.port)
        results = list(channel.send(messages(channel, tmp_path, 5)))
        channel.close()

    statuses = [r.status for r in results]
    assert statuses == [SendStatus.SENT, SendStatus.PERMANENT, SendStatus.SENT, SendStatus.TRANSIENT, SendStatus.SENT]
    assert results[1].error == "RCPT TO: 550 5.1.1 No such user"
    assert results[3].error == "RCPT TO: 451 4.3.0 Mailbox busy, try later"
    assert [m.rcpt_tos for m in handler.messages] == [["c1@example.com"], ["c3@example.com"], ["c5@example.com"]]
    assert [r.provider_id for r in results if r.status is SendStatus.SENT] == [m.reply for m in handler.messages]
    assert len(handler.peers) == 1


def test_a_connection_dropped_mid_batch_leaves_the_rest_transient(tmp_path: Path):
    handler = Recorder(drop_after=2)
    with smtp_server(handler) as server:
        channel = make_channel(tmp_path, server.port)
        batch = messages(channel, tmp_path, 5)
        results = list(channel.send(batch))
        assert [r.status for r in results] == [SendStatus.SENT] * 2 + [SendStatus.TRANSIENT] * 3
        assert "connection to 127.0.0.1" in results[2].error and "lost" in results[2].error
        assert all(r.error.startswith("not attempted: ") for r in results[3:])
        assert [m.rcpt_tos[0] for m in handler.messages] == ["c1@example.com", "c2@example.com"]

        handler.drop_after = None
        retry = list(channel.send(batch[2:]))  # the ledger's retry: a new connection, the rest delivered once
        channel.close()

    assert [r.status for r in retry] == [SendStatus.SENT] * 3
    assert [m.rcpt_tos[0] for m in handler.messages] == [f"c{i}@example.com" for i in range(1, 6)]
    assert len({m.parsed["Message-ID"] for m in handler.messages}) == 5
    assert len(handler.peers) == 2


def test_a_connection_the_server_closed_between_batches_is_reopened(tmp_path: Path):
    handler = Recorder()
    with smtp_server(handler) as server:
        channel = make_channel(tmp_path, server.port)
        batch = messages(channel, tmp_path, 4)
        assert [r.status for r in list(channel.send(batch[:2]))] == [SendStatus.SENT] * 2
        for transport in handler.transports:
            server.loop.call_soon_threadsafe(transport.close)
        deadline = time.monotonic() + 5
        while not all(t.is_closing() for t in handler.transports) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)  # the FIN reaches the client
        assert [r.status for r in list(channel.send(batch[2:]))] == [SendStatus.SENT] * 2
        channel.close()
    assert len(handler.messages) == 4 and len(handler.peers) == 2


def write_config(tmp_path: Path, port: int, extra: str = "") -> Path:
    path = tmp_path / "orchestrator.yaml"
    path.write_text(
        f"unsubscribe_url: {UNSUBSCRIBE}\nchannels:\n  email:\n    from: Shop <shop@example.com>\n"
        "    smtp:\n      host: 127.0.0.1\n"
        f"      port: {port}\n      security: none\n      timeout: 5\n{extra}",
        encoding="utf-8",
    )
    return path


def test_auth_with_the_password_from_the_environment(tmp_path: Path, monkeypatch):
    handler = Recorder()
    monkeypatch.setenv(PASSWORD_ENV, "s3cret")
    auth = {"authenticator": authenticator("s3cret"), "auth_required": True, "auth_require_tls": False}
    with smtp_server(handler, **auth) as server:
        credentials = f"      username: mailer\n      password: ${{{PASSWORD_ENV}}}\n"
        settings = load_settings(write_config(tmp_path, server.port, credentials))
        assert settings.channels["email"]["smtp"]["password"] == "s3cret"
        channel = EmailChannel(settings.channels["email"], settings)
        results = list(channel.send(messages(channel, tmp_path, 2)))
        channel.close()
    assert [r.status for r in results] == [SendStatus.SENT] * 2
    assert [m.login for m in handler.messages] == ["mailer", "mailer"]


def test_a_wrong_password_stops_the_send_with_the_servers_reply(tmp_path: Path, monkeypatch):
    """535 condemns the configuration, not the messages: the command stops at once with the reason, and the
    messages stay pending for a resume once the password is fixed."""
    handler = Recorder()
    monkeypatch.setenv(PASSWORD_ENV, "wrong")
    auth = {"authenticator": authenticator("s3cret"), "auth_required": True, "auth_require_tls": False}
    with smtp_server(handler, **auth) as server:
        credentials = f"      username: mailer\n      password: ${{{PASSWORD_ENV}}}\n"
        settings = load_settings(write_config(tmp_path, server.port, credentials))
        channel = EmailChannel(settings.channels["email"], settings)
        with pytest.raises(RuntimeFailure) as caught:
            list(channel.send(messages(channel, tmp_path, 3)))
        channel.close()
    assert caught.value.message.startswith(f"cannot log in to 127.0.0.1:{server.port}: 535 ")
    assert "channels.email.smtp" in caught.value.hint
    assert handler.messages == []


def test_starttls_against_a_server_without_it_fails_fast(tmp_path: Path):
    handler = Recorder()
    with smtp_server(handler) as server:  # aiosmtpd without a TLS context offers no STARTTLS
        channel = make_channel(tmp_path, server.port, security="starttls")
        started = time.monotonic()
        with pytest.raises(RuntimeFailure) as caught:
            list(channel.send(messages(channel, tmp_path, 3)))
        elapsed = time.monotonic() - started
    assert elapsed < 2
    assert "STARTTLS" in caught.value.message and "security" in caught.value.hint
    assert handler.messages == []


def test_starttls_with_a_self_signed_certificate(tmp_path: Path, certificate, monkeypatch):
    handler = Recorder()
    monkeypatch.setenv(PASSWORD_ENV, "s3cret")
    tls = {"tls_context": server_tls(certificate), "require_starttls": True}
    auth = {"authenticator": authenticator("s3cret"), "auth_required": True}  # AUTH only after STARTTLS
    with smtp_server(handler, **tls, **auth) as server:
        extra = {"security": "starttls", "username": "mailer", "password": "s3cret"}
        channel = make_channel(tmp_path, server.port, ca_file=str(certificate[0]), **extra)
        results = list(channel.send(messages(channel, tmp_path, 3)))
        channel.close()

        untrusted = make_channel(tmp_path, server.port, **extra)  # the system's CAs do not know this certificate
        with pytest.raises(RuntimeFailure) as refused:
            list(untrusted.send(messages(untrusted, tmp_path, 2)))
        plain = make_channel(tmp_path, server.port)  # no TLS: the server requires it
        not_secured = list(plain.send(messages(plain, tmp_path, 2)))
    assert [r.status for r in results] == [SendStatus.SENT] * 3
    assert handler.tls_peers == handler.peers and len(handler.peers) == 1
    assert "start TLS" in refused.value.message and "CERTIFICATE_VERIFY_FAILED" in refused.value.message
    assert [r.status for r in not_secured] == [SendStatus.PERMANENT] * 2  # 530 5.7.0 Must issue STARTTLS first
    assert "530" in not_secured[0].error
    assert len(handler.messages) == 3


def test_implicit_tls(tmp_path: Path, certificate):
    handler = Recorder()
    with smtp_server(handler, ssl_context=server_tls(certificate)) as server:
        channel = make_channel(tmp_path, server.port, security="ssl", ca_file=str(certificate[0]))
        results = list(channel.send(messages(channel, tmp_path, 2)))
        channel.close()
    assert [r.status for r in results] == [SendStatus.SENT] * 2
    assert handler.tls_peers == handler.peers and len(handler.peers) == 1


def test_a_slow_server_times_out_as_transient(tmp_path: Path):
    handler = Recorder(delay=3)
    with smtp_server(handler) as server:
        channel = make_channel(tmp_path, server.port, timeout=0.5)
        started = time.monotonic()
        results = list(channel.send(messages(channel, tmp_path, 3)))
        elapsed = time.monotonic() - started
        channel.close()
    assert [r.status for r in results] == [SendStatus.TRANSIENT] * 3
    assert "timed out" in results[0].error and results[1].error.startswith("not attempted: ")
    assert elapsed < 2.5


def test_a_server_that_never_greets_or_is_not_there_stops_the_send(tmp_path: Path):
    with socket.socket() as silent:  # accepts connections (backlog) but never says 220
        silent.bind(("127.0.0.1", 0))
        silent.listen(5)
        channel = make_channel(tmp_path, silent.getsockname()[1], timeout=0.5)
        with pytest.raises(RuntimeFailure) as caught:
            list(channel.send(messages(channel, tmp_path, 2)))
    assert caught.value.message.startswith("cannot connect to 127.0.0.1:")
    assert "port" in caught.value.hint

    nobody = make_channel(tmp_path, free_port())
    with pytest.raises(RuntimeFailure) as caught:
        list(nobody.send(messages(nobody, tmp_path, 2)))
    nobody.close()
    assert "ConnectionRefusedError" in caught.value.message


def test_after_a_first_connection_a_lost_server_is_transient(tmp_path: Path):
    handler = Recorder()
    port = free_port()
    with smtp_server(handler, port=port):
        channel = make_channel(tmp_path, port)
        assert [r.status for r in channel.send(messages(channel, tmp_path, 1))] == [SendStatus.SENT]
    results = list(channel.send(messages(channel, tmp_path, 2, prefix="run2")))  # the server went away
    assert [r.status for r in results] == [SendStatus.TRANSIENT] * 2
    assert "ConnectionRefusedError" in results[0].error


@pytest.mark.parametrize("smtputf8", [True, False])
def test_an_internationalised_address_needs_smtputf8(tmp_path: Path, smtputf8: bool):
    handler = Recorder()
    with smtp_server(handler, enable_SMTPUTF8=smtputf8) as server:
        channel = make_channel(tmp_path, server.port)
        batch = messages(channel, tmp_path, 2)
        batch[0].contact = "张伟@example.com"
        results = list(channel.send(batch))
        channel.close()
    if smtputf8:
        assert [r.status for r in results] == [SendStatus.SENT] * 2
        assert [m.rcpt_tos for m in handler.messages] == [["张伟@example.com"], ["c2@example.com"]]
    else:  # the server cannot take this address: permanent for it, the next message still goes
        assert [r.status for r in results] == [SendStatus.PERMANENT, SendStatus.SENT]
        assert "needs SMTPUTF8" in results[0].error
        assert [m.rcpt_tos for m in handler.messages] == [["c2@example.com"]]


def test_smtp_config_is_validated(tmp_path: Path):
    with pytest.raises(InputError, match="security"):
        make_channel(tmp_path, 25, security="tls")
    with pytest.raises(InputError, match="needs a username"):
        make_channel(tmp_path, 25, password="x")
    with pytest.raises(InputError, match="expected a mapping"):
        EmailChannel({"smtp": "smtp.example.com"}, Settings(base_dir=str(tmp_path)))
    smtp = {"host": "mail.example.com"}
    settings = Settings(
        base_dir=str(tmp_path), unsubscribe_url=UNSUBSCRIBE, channels={"email": {"from": SENDER, "smtp": smtp}}
    )
    channel = EmailChannel(settings.channels["email"], settings)
    assert channel._smtp.config.effective_port == 587 and channel._smtp.config.timeout == 30


def test_a_misspelt_smtp_key_gets_its_line_and_a_suggestion(tmp_path: Path):
    path = write_config(tmp_path, 2525, "      pasword: x\n      usrname: mailer\n")
    settings = load_settings(path)
    with pytest.raises(InputError) as caught:
        EmailChannel(settings.channels["email"], settings)
    text = caught.value.render()
    assert f"{path}:10" in text and "did you mean 'password'" in text
    assert f"{path}:11" in text and "did you mean 'username'" in text


CAMPAIGN = """\
name: smtp-check
segment: {recency_days: {lt: 30}}
message:
  email:
    subject: "Hi {{ customer.name }}"
    text: "Hello {{ customer.name }}"
"""


def test_orchestrator_run_delivers_over_smtp(engine: Engine, db_url: str, tmp_path: Path, monkeypatch):
    dataset.load(engine)
    handler = Recorder()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ORCHESTRATOR_CONFIG", raising=False)
    campaign = tmp_path / "campaign.yaml"
    campaign.write_text(CAMPAIGN, encoding="utf-8")
    with smtp_server(handler) as server:
        config = write_config(tmp_path, server.port, "timezone: Asia/Shanghai\ntemplates: []\n")
        result = Cli(db_url, config=str(config))("run", str(campaign), "--at", AT.isoformat(), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)

    with engine.connect() as conn:
        rows = conn.execute(
            select(Delivery.id, Delivery.state, Delivery.provider_id, Customer.email).join(
                Customer, Customer.id == Delivery.customer_pk
            )
        ).all()
    sent = [row for row in rows if row.state == "sent"]
    assert sent and data["outcomes"] == {"sent": len(sent)}
    by_reply = {m.reply: m for m in handler.messages}
    assert len(handler.messages) == len(sent) == len(by_reply)  # each message received once
    for row in sent:
        received = by_reply[row.provider_id]
        assert received.rcpt_tos == [row.email] and received.parsed["To"] == row.email
        assert received.parsed["Subject"].startswith("Hi ")
    assert len(handler.peers) == 1 and handler.quits == 1  # one connection for the run, closed at its end
    assert not (tmp_path / "outbox").exists()


def test_a_run_against_a_server_without_starttls_stops_at_once_with_the_reason(
    engine: Engine, db_url: str, tmp_path: Path, monkeypatch
):
    dataset.load(engine)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ORCHESTRATOR_CONFIG", raising=False)
    campaign = tmp_path / "campaign.yaml"
    campaign.write_text(CAMPAIGN, encoding="utf-8")
    handler = Recorder()
    with smtp_server(handler) as server:
        config = write_config(tmp_path, server.port, "templates: []\n")
        config.write_text(config.read_text().replace("security: none", "security: starttls"), encoding="utf-8")
        started = time.monotonic()
        result = Cli(db_url, config=str(config))("run", str(campaign), "--at", AT.isoformat())
        elapsed = time.monotonic() - started
    assert result.exit_code == 1, result.output
    assert elapsed < 10
    output = result.output + result.stderr
    assert "STARTTLS" in output and "channels.email.smtp" in output and "retrying" not in output
    with engine.connect() as conn:
        states = {row.state for row in conn.execute(select(Delivery.state).where(Delivery.state != "skipped"))}
    assert states == {"pending"}  # nothing failed or retried for a configuration mistake: resume sends them


class Busy(Recorder):
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        return "451 4.3.0 try again later"


def test_retrying_counts_messages_not_attempts(engine: Engine, db_url: str, tmp_path: Path, monkeypatch):
    dataset.load(engine)
    monkeypatch.chdir(tmp_path)
    campaign = tmp_path / "campaign.yaml"
    campaign.write_text(CAMPAIGN, encoding="utf-8")
    retry = (
        "dispatch:\n  linger_seconds: 1\n  breaker: {min_calls: 1000}\n"
        "  retry: {max_attempts: 50, first_delay_seconds: 0.05, max_delay_seconds: 5}\n"
    )
    with smtp_server(Busy()) as server:
        config = write_config(tmp_path, server.port, "templates: []\n" + retry)
        result = Cli(db_url, config=str(config))("run", str(campaign), "--at", AT.isoformat(), "--json")
    assert result.exit_code == 0, result.output
    with engine.connect() as conn:
        query = select(Delivery.state, Delivery.attempts).where(Delivery.state != "skipped")
        rows = conn.execute(query).all()
    assert rows and all(row.state == "pending" for row in rows)
    assert sum(row.attempts for row in rows) > len(rows)  # each message was tried more than once ...
    assert json.loads(result.stdout)["outcomes"] == {"retrying": len(rows)}  # ... and counted once
