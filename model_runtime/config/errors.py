"""ConfigError and the once-per-process log of configuration fallbacks."""

from __future__ import annotations

import logging

log = logging.getLogger("model_runtime.config")
_logged_once: set[str] = set()


class ConfigError(ValueError):
    """A checkpoint config that cannot be served; the message names the key and the value."""


def log_once(message: str) -> None:
    """Log a configuration fallback once per process, not once per model construction."""
    if message not in _logged_once:
        _logged_once.add(message)
        log.warning(message)
