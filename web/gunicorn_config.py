"""gunicorn settings for the deployed web: `gunicorn -c python:web.gunicorn_config "web:create_app()"`.

gunicorn builds the app in each worker, and a worker that fails to boot only makes gunicorn exit 3
with a traceback. This hook checks the configuration in the master before any worker starts, so an
unsafe one stops the web like every other process: one line naming the variable, exit status 2.
"""

from __future__ import annotations

from shared.config import config_or_exit


def on_starting(server: object) -> None:
    config_or_exit()
