"""What ``dramatiq coursegen.actors`` loads: the app built from the environment.

Importing this module reads the settings from the environment (it is the workers' entry point),
builds the app (:func:`coursegen.app.build_app`) and makes its broker Dramatiq's global one, as
the ``dramatiq`` command expects. It opens no connection. Producers may send through
``generate_course`` here; code that has its own settings builds its own app (as
:class:`coursegen.jobs.Jobs` does) rather than importing this module.
"""

from __future__ import annotations

import dramatiq

from .app import MAX_RESULT_BYTES, QUEUE, build_app
from .settings import load_settings

settings = load_settings()
app = build_app(settings)
broker = app.broker
#: None when status sync is off
status_middleware = app.status
generate_course = app.generate_course
dramatiq.set_broker(broker)

__all__ = ["MAX_RESULT_BYTES", "QUEUE", "app", "broker", "generate_course", "settings", "status_middleware"]
