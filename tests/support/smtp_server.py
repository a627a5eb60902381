"""A real SMTP server on 127.0.0.1 (aiosmtpd in a thread), with scripted faults, for sync tests.

    with SmtpServer() as server:                     # plain SMTP on a free port
        send to (server.host, server.port)
        [received] = server.messages                 # ReceivedMessage: envelope + parsed message
        received.message["Subject"]

    certificate = make_certificate(tmp_path)         # self-signed, for 127.0.0.1 and localhost
    with SmtpServer(security="starttls", certificate=certificate, login=("user", "pw")) as server:
        client_context = certificate.client_context()   # trusts that certificate alone
        ...
        assert server.logins == [Login("PLAIN", "user", accepted=True)]

Faults, set on `server.faults` (or passed in) before sending; each count is used up by the
commands of any connection, in order, then the server behaves again:
    defer_data = N        reply 451 to the next N DATA commands (after the data was received)
    reject_data = N       reply 554 to the next N DATA commands
    defer_rcpt = N        reply 451 to the next N RCPT commands
    reject_rcpt = {...}   reply 550 to RCPT TO for these addresses, every time
    drop_after_data = N   hang up after the next N messages' data arrived, before replying
A server that never speaks is `silent_server()`; a port that refuses connections is
`refusing_port()`.

`security`: "none"; "starttls" (offered, not required); "tls" (implicit TLS). With `login`,
AUTH PLAIN and LOGIN are offered (over TLS only, for "starttls") and MAIL is refused with 530
until the client logged in; `mechanisms` narrows what is offered. aiosmtpd's own
`auth_required` is not used: on an implicit-TLS server it would need auth_require_tls=False,
which it warns about as insecure (it cannot tell that the connection is TLS from the start).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email
import email.policy
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

HOST = "127.0.0.1"
Security = Literal["none", "starttls", "tls"]


@dataclasses.dataclass(frozen=True)
class Certificate:
    """A self-signed certificate and its key, valid for 127.0.0.1 and localhost."""

    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts this certificate and nothing else."""
        return ssl.create_default_context(cafile=str(self.cert_file))


def make_certificate(directory: Path) -> Certificate:
    """Generate a certificate with the openssl command (the venv has no `cryptography`)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("the TLS tests need the openssl command (Debian package openssl)")
    cert_file, key_file = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "2", "-subj", "/CN=localhost",
            "-addext", f"subjectAltName=DNS:localhost,IP:{HOST}",
            "-keyout", str(key_file), "-out", str(cert_file),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return Certificate(cert_file, key_file)


@dataclasses.dataclass(frozen=True)
class ReceivedMessage:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes  # the DATA as received, dot-unstuffed
    message: EmailMessage  # parsed with email.policy.default
    tls: bool  # whether it came over TLS (implicit or after STARTTLS)


@dataclasses.dataclass(frozen=True)
class Login:
    mechanism: str
    username: str
    accepted: bool


@dataclasses.dataclass
class Faults:
    """Scripted failures; see the module docstring. Counts go down as faults are served."""

    defer_data: int = 0
    reject_data: int = 0
    defer_rcpt: int = 0
    reject_rcpt: frozenset[str] = frozenset()
    drop_after_data: int = 0


class SmtpServer:
    """An aiosmtpd server on 127.0.0.1 and a free port, recording what it receives."""

    def __init__(
        self,
        *,
        security: Security = "none",
        certificate: Certificate | None = None,
        login: tuple[str, str] | None = None,
        mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN"),
        faults: Faults | None = None,
    ) -> None:
        if security != "none" and certificate is None:
            raise ValueError(f"security={security!r} needs a certificate")
        self.host = HOST
        self.port = 0
        self.faults = faults or Faults()
        self.messages: list[ReceivedMessage] = []
        self.logins: list[Login] = []
        self._login = login
        self._lock = threading.Lock()
        tls = certificate.server_context() if certificate is not None else None
        options: dict[str, Any] = {
            "server_hostname": "smtp.test",  # else aiosmtpd asks DNS for this host's FQDN
            "auth_exclude_mechanism": [m for m in ("PLAIN", "LOGIN") if m not in mechanisms],
        }
        if login is not None:
            options["authenticator"] = self._authenticate
            # Implicit TLS is invisible to aiosmtpd's check: AUTH would never be offered.
            options["auth_require_tls"] = security == "starttls"
        if security == "starttls":
            options["tls_context"] = tls
        elif security == "tls":
            options["ssl_context"] = tls
        self._controller = _FreePortController(_Handler(self), hostname=HOST, **options)

    def __enter__(self) -> Self:
        self._controller.start()
        self.port = self._controller.port
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._controller.stop()

    def take(
        self, fault: Literal["defer_data", "reject_data", "defer_rcpt", "drop_after_data"]
    ) -> bool:
        """Use up one of a counted fault, if any is left."""
        with self._lock:
            left: int = getattr(self.faults, fault)
            if left > 0:
                setattr(self.faults, fault, left - 1)
            return left > 0

    def record(self, received: ReceivedMessage) -> None:
        with self._lock:
            self.messages.append(received)

    def needs_login(self, session: Session) -> bool:
        return self._login is not None and not session.authenticated

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if not isinstance(data, LoginPassword) or self._login is None:
            return AuthResult(success=False, handled=False)
        username = data.login.decode("utf-8", "replace")
        password = data.password.decode("utf-8", "replace")
        accepted = (username, password) == self._login
        with self._lock:
            self.logins.append(Login(mechanism, username, accepted))
        return AuthResult(success=accepted, handled=False)


class _FreePortController(Controller):
    """Binds port 0 and learns the port the system chose. aiosmtpd's Controller connects to
    `self.port` to check the server is up, so the port is set before that probe runs."""

    def __init__(self, handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, port=0, **kwargs)

    def _trigger_server(self) -> None:
        assert isinstance(self.server, asyncio.Server)
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class _Handler:
    """aiosmtpd's hooks: each returns the reply to send, or hangs up."""

    def __init__(self, server: SmtpServer) -> None:
        self._server = server

    async def handle_MAIL(
        self, smtp: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if self._server.needs_login(session):
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, smtp: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if self._server.take("defer_rcpt"):
            return "451 4.3.0 Mailbox temporarily unavailable (scripted)"
        if address in self._server.faults.reject_rcpt:
            return f"550 5.1.1 <{address}>: Recipient address rejected (scripted)"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, smtp: SMTP, session: Session, envelope: Envelope) -> str:
        if self._server.take("drop_after_data"):
            assert smtp.transport is not None
            smtp.transport.close()
            # Closing ends the connection, and aiosmtpd cancels this handler when it sees it
            # lost: no reply is ever sent.
            await asyncio.Event().wait()
        if self._server.take("defer_data"):
            return "451 4.3.0 Temporary failure, try again later (scripted)"
        if self._server.take("reject_data"):
            return "554 5.6.0 Message rejected (scripted)"
        raw = bytes(envelope.original_content or b"")
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        assert smtp.transport is not None
        tls = smtp.transport.get_extra_info("ssl_object") is not None
        self._server.record(
            ReceivedMessage(str(envelope.mail_from), tuple(envelope.rcpt_tos), raw, message, tls)
        )
        return "250 2.0.0 OK: queued"


@contextlib.contextmanager
def silent_server() -> Iterator[tuple[str, int]]:
    """(host, port) of a server that accepts connections and never says a word: the kernel
    completes the handshake for a listening socket that nobody accepts from."""
    with socket.create_server((HOST, 0), backlog=8) as listener:
        yield HOST, listener.getsockname()[1]


@contextlib.contextmanager
def refusing_port() -> Iterator[tuple[str, int]]:
    """(host, port) where connections are refused: the port is bound, so nothing else can take
    it meanwhile, but not listening, so the kernel answers a connection with a reset."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as bound:
        bound.bind((HOST, 0))
        yield HOST, bound.getsockname()[1]
