"""Every plugin test runs with the plugins installed (see the repository's conftest.py)."""

import pytest


@pytest.fixture(autouse=True)
def _plugins_installed(sink_plugins):
    return sink_plugins
