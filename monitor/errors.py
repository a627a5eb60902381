"""The one exception tree of the service.

    MonitorError                  base; `permanent` says whether retrying can help
    +-- ConfigError               invalid settings; carries every problem found, not just the first
    +-- FetchError                the HTTP exchange with a feed failed
    |   +-- FetchConnectError     could not connect (refused, DNS, TLS)          transient
    |   +-- FetchTimeout          connect/read timeout or overall deadline        transient
    |   +-- FetchProtocolError    connection broken mid-exchange, malformed answer transient
    |   +-- FetchRequestError     bad URL/scheme, redirect loop, bad encoding     permanent
    |   +-- HttpStatusError       not 2xx/304; 408, 429, 5xx transient, other 4xx permanent
    |   +-- BodyTooLarge          body (after decompression) passed the size cap  permanent
    |   +-- HostBackoff           Retry-After longer than a chart is held       transient
    +-- FeedError                 a 2xx body that is not a chart we can read
    |   +-- FeedFormatError       not JSON, or JSON of the wrong shape            permanent
    |   +-- EmptyChart            a chart of zero entries (treated as a failed fetch) transient
    +-- StoreError                the database refused or failed
    |   +-- DatabaseLocked        another writer process owns the SQLite file     permanent
    |   +-- LeaseLost             the poll lease expired and was taken over        permanent
    |   +-- SchemaTooNew          the database was migrated by a newer version     permanent
    +-- DeliveryError             a notification was not handed over; `smtp_code` is the reply
                                  refused, reset, timeout, disconnect, TLS, 4xx   transient
                                  5xx (recipient, sender, data, 535 login), invalid
                                  address, no STARTTLS/AUTH offered               permanent

`permanent` is read by the retry logic of each channel: only transient errors are retried.
"""

from __future__ import annotations


class MonitorError(Exception):
    permanent: bool = False


class ConfigError(MonitorError):
    permanent = True

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


class FetchError(MonitorError):
    def __init__(self, message: str, *, url: str, attempts: int = 1) -> None:
        super().__init__(message)
        self.url = url
        self.attempts = attempts


class FetchConnectError(FetchError):
    pass


class FetchTimeout(FetchError):
    pass


class FetchProtocolError(FetchError):
    pass


class FetchRequestError(FetchError):
    permanent = True


class HttpStatusError(FetchError):
    def __init__(self, status: int, *, url: str, attempts: int = 1) -> None:
        super().__init__(f"HTTP {status} from {url}", url=url, attempts=attempts)
        self.status = status
        self.permanent = is_permanent_status(status)


class BodyTooLarge(FetchError):
    permanent = True


class HostBackoff(FetchError):
    """No request may go to the host for `retry_after_seconds`; the chart should be deferred."""

    def __init__(self, message: str, *, url: str, retry_after_seconds: float, attempts: int = 0):
        super().__init__(message, url=url, attempts=attempts)
        self.retry_after_seconds = retry_after_seconds


class FeedError(MonitorError):
    permanent = True


class FeedFormatError(FeedError):
    pass


class EmptyChart(FeedError):
    permanent = False


class StoreError(MonitorError):
    pass


class DatabaseLocked(StoreError):
    permanent = True


class LeaseLost(StoreError):
    permanent = True


class SchemaTooNew(StoreError):
    permanent = True


class DeliveryError(MonitorError):
    """Raised by the channel that talks to the server; `permanent` is decided per failure."""

    def __init__(self, message: str, *, permanent: bool, smtp_code: int | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.smtp_code = smtp_code


def is_permanent_status(status: int) -> bool:
    """Whether an HTTP status is final: everything but 408, 429 and 5xx."""
    return not (status in (408, 429) or 500 <= status <= 599)
