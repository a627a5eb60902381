"""A schema-driven fuzz run of the read API: schemathesis generates requests from the API's
own OpenAPI document, valid ones and invalid ones, and checks that no answer is a 5xx and
that every answer matches the document (status code, content type, body schema).

Run against the real app on a SQLite database filled as in tests/test_api.py, so that the
generated requests meet real apps, charts and alerts; bounded to a few dozen examples per
endpoint and mode to stay fast.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from monitor.store.engine import Database
from tests.test_api import api_app, fill

PATHS = [
    "/api/v1/apps",
    "/api/v1/apps/{app}/history",
    "/api/v1/charts/{country}/{collection}",
    "/api/v1/movers",
    "/api/v1/alerts",
]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture
def api_schema(sqlite_database: Database) -> Any:
    return schemathesis.openapi.from_asgi("/api/v1/openapi.json", api_app(fill(sqlite_database)))


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("path", PATHS)
def test_no_request_makes_the_api_fail_or_leave_its_schema(
    api_schema: Any, path: str, mode: GenerationMode
) -> None:
    operation = api_schema[path]["GET"]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=30,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def requests_answered_as_documented(case: Any) -> None:
        case.call_and_validate(checks=CHECKS)

    requests_answered_as_documented()
