"""The one module that talks SMTP: hands a rendered message to the configured server.

Blocking (smtplib): the caller runs `SmtpSender.send` in a worker thread. It tries once and
raises DeliveryError with `permanent` set; retrying belongs to the outbox sender, the one place
that retries the email channel. `timeout_seconds` bounds connecting, the TLS handshake and
every command's reply, so a server that accepts the connection and never speaks fails in time.

Error messages name the server (host:port) and its reply (code and text), never the password.

`MailFileSender` is its stand-in where no mail server is wanted (`app-rank-monitor demo`):
behind the same `send`, it writes each message to a folder as an .eml file, byte for byte
what `SmtpSender` hands the server after DATA.
"""

from __future__ import annotations

import copy
import io
import logging
import os
import re
import smtplib
import ssl
import tempfile
from email.generator import BytesGenerator
from email.message import EmailMessage
from email.utils import getaddresses
from pathlib import Path
from typing import Protocol

from monitor.config_sections import SmtpSettings
from monitor.config_types import is_mail_address
from monitor.errors import DeliveryError

log = logging.getLogger(__name__)

# What a Message-ID may keep in a file name; the rest becomes "_".
_FILE_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._@-]+")


class MailSender(Protocol):
    """Delivers a rendered message (blocking) or raises DeliveryError; see SmtpSender."""

    def send(self, message: EmailMessage) -> None: ...


class SmtpSender:
    """Sends each message over a fresh connection: alert mail is rare, and a connection kept
    open between polls would mostly be found closed by the server."""

    def __init__(
        self, settings: SmtpSettings, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self._settings = settings
        self._ssl_context = ssl_context if ssl_context is not None else ssl.create_default_context()
        self._server = f"{settings.host}:{settings.port}"

    def send(self, message: EmailMessage) -> None:
        """Deliver `message` to the addresses in its To, Cc and Bcc headers, or raise
        DeliveryError. Returns once the server accepted the message for every recipient."""
        recipients = envelope_recipients(message, f"not sent to {self._server}")
        client: smtplib.SMTP | None = None
        try:
            client = self._open()
            refused = client.send_message(message, self._settings.from_address, recipients)
        except OSError as exc:  # smtplib.SMTPException is an OSError too
            if client is not None:
                client.close()
            # `from None`: smtplib's exceptions carry the raw replies, ours the scrubbed ones.
            raise self._delivery_error(exc) from None
        try:
            client.quit()
        except OSError:
            # The server took the message (250 after DATA): failing now would only make the
            # outbox send it a second time.
            client.close()
        if refused:
            # The others have it: a retry sends them a second copy, with the same Message-ID.
            raise self._refused_error(refused, "accepted the message for the other recipients")
        log.debug(
            "sent email",
            extra={"message_id": str(message["Message-ID"]), "server": self._server},
        )

    def _open(self) -> smtplib.SMTP:
        """A connection ready for MAIL: greeted, TLS as configured, logged in if configured.
        smtplib connects in the constructor, and closes the socket itself when that fails."""
        settings = self._settings
        timeout = settings.timeout_seconds
        client = (
            smtplib.SMTP_SSL(
                settings.host, settings.port, timeout=timeout, context=self._ssl_context
            )
            if settings.security == "tls"
            else smtplib.SMTP(settings.host, settings.port, timeout=timeout)
        )
        try:
            client.ehlo()
            if settings.security == "starttls":
                # Raises SMTPNotSupportedError when STARTTLS is not offered: sending in clear
                # text instead would defeat the setting.
                client.starttls(context=self._ssl_context)
                client.ehlo()
            if settings.username is not None and settings.password is not None:
                client.login(settings.username, settings.password)
        except BaseException:
            client.close()
            raise
        return client

    def _delivery_error(self, exc: OSError) -> DeliveryError:
        where = f"SMTP server {self._server}"
        if isinstance(exc, smtplib.SMTPRecipientsRefused):
            return self._refused_error(exc.recipients, "accepted no recipient")
        if isinstance(exc, smtplib.SMTPResponseException):
            # SMTPSenderRefused, SMTPDataError, SMTPAuthenticationError, SMTPConnectError,
            # SMTPHeloError: the server answered, and its code says whether to come back.
            return self._error(
                f"{where} answered {_reply(exc.smtp_code, exc.smtp_error)}",
                _is_permanent(exc.smtp_code),
                exc.smtp_code,
            )
        if isinstance(exc, smtplib.SMTPServerDisconnected) or not isinstance(
            exc, smtplib.SMTPException
        ):
            # Refused, reset, timed out, TLS handshake failed, or the server hung up: all
            # conditions of the moment, as with FetchConnectError on the HTTP side.
            return self._error(f"{where}: {type(exc).__name__}: {exc}", False, None)
        # SMTPNotSupportedError (no STARTTLS, no AUTH) and "no suitable authentication method":
        # what the server offers does not change by trying again.
        return self._error(f"{where}: {exc}", True, None)

    def _refused_error(self, refused: dict[str, tuple[int, bytes]], outcome: str) -> DeliveryError:
        """Permanent when every refusal was a 5xx; the first refusal's code is the error's."""
        codes = [code for code, _ in refused.values()]
        replies = "; ".join(
            f"{address}: {_reply(code, text)}" for address, (code, text) in refused.items()
        )
        return self._error(
            f"SMTP server {self._server} {outcome}, refusing {replies}",
            all(map(_is_permanent, codes)),
            codes[0],
        )

    def _error(self, message: str, permanent: bool, code: int | None) -> DeliveryError:
        password = self._settings.password
        if password:
            message = message.replace(password, "***")
        return DeliveryError(message, permanent=permanent, smtp_code=code)


class MailFileSender:
    """Writes each message into `folder` as `<n>-<Message-ID>.eml` (n counts up from 1, in the
    order sent): the bytes an SMTP server would receive, with CRLF line ends, which mail
    clients open as they are. A file appears whole or not at all."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        # Numbered after the messages of an earlier run in the folder, which stay.
        self._first_number = len(list(folder.glob("*.eml"))) + 1 if folder.is_dir() else 1
        self.written: list[Path] = []

    def send(self, message: EmailMessage) -> None:
        envelope_recipients(message, f"not written to {self._folder}")
        name = _FILE_NAME_UNSAFE.sub("_", str(message["Message-ID"]).strip("<> "))
        path = self._folder / f"{self._first_number + len(self.written):04d}-{name}.eml"
        try:
            self._folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(
                dir=self._folder, prefix=".writing-", suffix=".eml", delete=False
            ) as file:
                file.write(smtp_data(message))
            os.replace(file.name, path)
        except OSError as exc:
            raise DeliveryError(f"not written to {path}: {exc}", permanent=False) from None
        self.written.append(path)
        log.info("email written: %s: %s", path.name, message["Subject"], extra={"path": str(path)})


def smtp_data(message: EmailMessage) -> bytes:
    """The message as smtplib's `send_message` transmits it to a server without SMTPUTF8
    (recipient addresses are plain ASCII here): Bcc left out, CRLF line ends, a final CRLF."""
    transmitted = copy.copy(message)  # deleting rebinds the copy's header list only
    del transmitted["Bcc"]
    del transmitted["Resent-Bcc"]
    with io.BytesIO() as data:
        BytesGenerator(data).flatten(transmitted, linesep="\r\n")
        flat = data.getvalue()
    return flat if flat.endswith(b"\r\n") else flat + b"\r\n"


def envelope_recipients(message: EmailMessage, not_delivered: str) -> list[str]:
    """The addresses in the message's To, Cc and Bcc headers; DeliveryError (permanent,
    starting with `not_delivered`) for an invalid address or none."""
    headers = [str(value) for name in ("To", "Cc", "Bcc") for value in message.get_all(name, [])]
    addresses = [address for _, address in getaddresses(headers)]
    invalid = [address for address in addresses if not is_mail_address(address)]
    if invalid or not addresses:
        problem = f"invalid recipient address {invalid[0]!r}" if invalid else "no recipient"
        raise DeliveryError(f"{not_delivered}: {problem}", permanent=True)
    return addresses


def _is_permanent(code: int) -> bool:
    """5xx replies are final (RFC 5321 section 4.2.1); 4xx and anything odd are not."""
    return 500 <= code <= 599


def _reply(code: int, text: bytes | str) -> str:
    decoded = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return f"{code} {' '.join(decoded.split())}"
