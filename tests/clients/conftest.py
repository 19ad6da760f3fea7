"""The CLI tests reuse search_service's fixtures (real servers on the session loop)."""

from tests.search_service.conftest import client, search_app, start_search_app

__all__ = ["client", "search_app", "start_search_app"]
