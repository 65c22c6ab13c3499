"""The HTTP provider adapters (services/common/providers) against the fake provider servers,
over real loopback HTTP, and against answers the fakes do not give (httpx.MockTransport)."""

import pytest

# helpers.py's assert_* helpers get the same assertion messages as the tests.
pytest.register_assert_rewrite("tests.integration.adapters.helpers")
