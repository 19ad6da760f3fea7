"""Every test's environment, and the fixtures of tests/support, registered for all."""

from __future__ import annotations

import atexit
import inspect
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Tests never reach a hub; a stray hub id fails fast instead of waiting on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Exact comparisons need one runtime everywhere, services started as processes included
# (the runtimes have their own tests), and exports go to a cache of the run's own.
os.environ.setdefault("EMBED_BACKEND", "torch")
if "EMBED_CACHE_DIR" not in os.environ:
    os.environ["EMBED_CACHE_DIR"] = tempfile.mkdtemp(prefix="imagesearch-test-cache-")
    atexit.register(shutil.rmtree, os.environ["EMBED_CACHE_DIR"], ignore_errors=True)

pytest_plugins = ["tests.support.fixtures", "tests.support.stores"]

# Slow as a group: the cross-service tests start both services, often as processes, and the
# build tests start the index builder's child; so does any test that lowers the threshold.
SLOW_GROUPS = ("system/", "search_service/test_local_build.py")
TESTS = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        where = item.path.relative_to(TESTS).as_posix()
        function = getattr(item, "function", None)
        builds = function is not None and "index_threshold=" in inspect.getsource(function)
        if where.startswith(SLOW_GROUPS) or builds:
            item.add_marker(pytest.mark.slow)
