"""The Retention page's place in Airflow: what ``plugins/retention_plugin.py`` registers.

Airflow imports plugins in every process, task processes included, so this module stays
light: the page's FastAPI app (``retention_app``, which imports Airflow's API security
module, several seconds of imports) is built on its first request, in the API server only.

- ``/retention/`` — the overview of every retention activity the user may read, in the
  navigation as *Retention* (an external view: Airflow shows it in a frame).
- ``/retention/dags/{dag_id}`` — the *Retention* tab of each DAG.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

URL_PREFIX = "/retention"
APP_FACTORY = "include.retention.retention_app:create_app"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class LazyApp:
    """An ASGI app that imports and builds the real one (``module:factory``) on first use."""

    def __init__(self, factory: str) -> None:
        self.factory = factory
        self._app: Any = None
        self._lock = threading.Lock()

    def _build(self) -> Any:
        with self._lock:
            if self._app is None:
                module, _, name = self.factory.partition(":")
                self._app = getattr(importlib.import_module(module), name)()
        return self._app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self._app or self._build()
        await app(scope, receive, send)


def fastapi_app() -> dict[str, Any]:
    """The plugin's ``fastapi_apps`` entry (mounted by the API server at ``/retention``)."""
    return {"app": LazyApp(APP_FACTORY), "url_prefix": URL_PREFIX, "name": "Retention"}


def external_views() -> list[dict[str, Any]]:
    """The plugin's ``external_views``: the page in the navigation and a tab on every DAG
    (for a DAG that is not a retention DAG the tab says so)."""
    return [
        {
            "name": "Retention",
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "url_route": "retention",
            "nav_top_level": True,
        },
        {
            "name": "Retention",
            "href": f"{URL_PREFIX}/dags/{{DAG_ID}}",
            "destination": "dag",
            "url_route": "retention_dag",
        },
    ]
