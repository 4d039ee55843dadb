"""Running the gateway: uvicorn with one worker, uvloop and httptools when installed, no access log.

uvicorn traps SIGINT/SIGTERM, stops accepting, lets open requests finish (for at most
`GRACEFUL_SHUTDOWN_S`), then runs the app's lifespan shutdown, which drains the exchange writer
into the store before the process exits. Logs (uvicorn's too) go to stderr as JSON lines by default,
with anything that looks like a key masked (`downsize.gateway.logs`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from downsize.config import GatewayConfig

if TYPE_CHECKING:
    import uvicorn

    from downsize.route.router import Router
    from downsize.store.store import Store

GRACEFUL_SHUTDOWN_S = 30


def uvicorn_config(config: GatewayConfig, app: Any, **overrides: Any) -> uvicorn.Config:
    """The uvicorn settings the gateway runs under (tests use the same, on their own socket)."""
    import uvicorn

    settings: dict[str, Any] = {
        "host": config.host,
        "port": config.port,
        "loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        "http": "httptools" if importlib.util.find_spec("httptools") else "h11",
        "lifespan": "on",
        "access_log": False,
        "workers": 1,
        "server_header": False,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S,
        "log_level": config.log_level,
        "log_config": None,  # logging is the process's (configure_logging), not uvicorn's own setup
    }
    settings.update(overrides)
    return uvicorn.Config(app, **settings)


def serve(
    config: GatewayConfig,
    store: Store,
    router: Router | None = None,
    reload: Callable[[], Router | None] | None = None,
) -> None:
    """Serve the gateway on config.host:config.port until interrupted; exchanges are drained on the way out.
    `reload` rebuilds the router from the store when routing modes change (see `create_app`)."""
    import uvicorn

    from downsize.gateway.app import create_app
    from downsize.gateway.logs import configure_logging

    configure_logging(config.log_format, config.log_level)
    app = create_app(config, store, router, reload=reload)
    uvicorn.Server(uvicorn_config(config, app)).run()
