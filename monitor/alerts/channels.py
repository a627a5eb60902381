"""The channels a notification goes out on: email (through SmtpSender, or MailFileSender in
the demo) and webhooks that take Alertmanager's JSON, so that receivers written for
Alertmanager (chat bridges) work unchanged.

Each channel delivers one Notification or raises DeliveryError; retrying is the outbox
sender's business.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any, Protocol

import httpx

from monitor.alerts.email import MailSender
from monitor.alerts.model import AlertEvent, EventState, Notification
from monitor.alerts.render import render_email
from monitor.config_types import redact_url_password
from monitor.errors import DeliveryError, is_permanent_status

# What Alertmanager writes for "no end time yet".
_NO_END = "0001-01-01T00:00:00Z"


class Channel(Protocol):
    async def deliver(self, notification: Notification) -> None: ...


def shown_recipient(channel: str, recipient: str) -> str:
    """A recipient as logs may show it: a webhook URL without its password."""
    return redact_url_password(recipient) if channel == "webhook" else recipient


class EmailChannel:
    def __init__(self, mail: MailSender, *, from_address: str, grafana_url: str | None) -> None:
        self._mail = mail
        self._from = from_address
        self._grafana_url = grafana_url

    async def deliver(self, notification: Notification) -> None:
        message = render_email(notification, sender=self._from, grafana_url=self._grafana_url)
        # smtplib blocks: in a worker thread, the poll rounds go on meanwhile.
        await asyncio.to_thread(self._mail.send, message)


class WebhookChannel:
    """POSTs Alertmanager's webhook payload (version 4) to the notification's recipient URL."""

    def __init__(self, client: httpx.AsyncClient, *, external_url: str) -> None:
        self._client = client
        self._external_url = external_url

    async def deliver(self, notification: Notification) -> None:
        url = notification.recipient
        shown = redact_url_password(url)  # errors are logged and stored: no credentials
        try:
            response = await self._client.post(url, json=webhook_payload(
                notification, external_url=self._external_url))  # fmt: skip
        except httpx.HTTPError as exc:
            raise DeliveryError(
                f"webhook {shown}: {type(exc).__name__}: {str(exc).replace(url, shown)}",
                permanent=False,
            ) from exc
        if response.is_success:
            return
        raise DeliveryError(
            f"webhook {shown}: HTTP {response.status_code}",
            permanent=is_permanent_status(response.status_code),
        )


def webhook_payload(notification: Notification, *, external_url: str) -> dict[str, Any]:
    alerts = [_alert(event) for event in notification.events]
    firing = any(alert["status"] == "firing" for alert in alerts)
    labels = [alert["labels"] for alert in alerts]
    common = {k: v for k, v in labels[0].items() if all(other.get(k) == v for other in labels)}
    return {
        "version": "4",
        "groupKey": notification.message_id,
        "truncatedAlerts": 0,
        "status": "firing" if firing else "resolved",
        "receiver": "app-rank-monitor",
        "groupLabels": {},
        "commonLabels": common,
        "commonAnnotations": {},
        "externalURL": external_url,
        "alerts": alerts,
    }


def _alert(event: AlertEvent) -> dict[str, Any]:
    labels = {
        "alertname": event.rule,
        "kind": event.kind.value,
        "severity": event.severity.value,
        "app": event.app.name,
        "store": event.app.store.value,
        "store_id": event.app.store_id,
        "scope": event.scope,
    }
    if event.chart is not None:
        labels |= {
            "country": event.chart.country,
            "collection": event.chart.collection.value,
            "device": event.chart.device.value,
            "genre": event.chart.genre,
        }
    resolved = event.state is EventState.RESOLVED
    at = event.at.strftime("%Y-%m-%dT%H:%M:%SZ")
    fingerprint = hashlib.sha256("|".join(f"{k}={v}" for k, v in sorted(labels.items())).encode())
    return {
        "status": event.state.value,
        "labels": labels,
        "annotations": {"summary": event.summary, **dict(event.facts)},
        "startsAt": at,
        "endsAt": at if resolved else _NO_END,
        "generatorURL": event.app.store_url,
        "fingerprint": fingerprint.hexdigest()[:16],
    }
