# Offsession: one image for migrate, web, worker, worker-charges, beat and (dev profile) the emulator.
# The package is the deployable unit: the final stage holds a virtualenv with the locked dependencies and
# the project's wheel, and no source. tests/integration/test_deployment.py builds and runs it the same way.
FROM python:3.11-slim AS build
WORKDIR /src
# Dependencies first, from the lock (exact versions, hashes checked): a code change reuses this layer.
COPY requirements.lock ./
RUN python -m venv /venv \
    && /venv/bin/pip install --no-cache-dir --disable-pip-version-check --require-hashes --no-deps \
        -r requirements.lock
# The source, once, to build the wheel (migrations, Celery settings, templates and static files inside).
COPY pyproject.toml README.md ./
COPY shared shared
COPY web web
COPY worker worker
COPY cli cli
COPY stripe_emulator stripe_emulator
RUN python -m pip wheel --no-cache-dir --disable-pip-version-check --no-deps --wheel-dir /wheels . \
    && /venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps /wheels/offsession-*.whl \
    && /venv/bin/pip check

FROM python:3.11-slim
# An unprivileged user whose home is the only place it may write (OFFSESSION_HOME: var/ for an embedded
# default, which the compose file's configuration does not use). /venv stays root's: read-only code.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/offsession --create-home \
        --shell /usr/sbin/nologin offsession
COPY --from=build /venv /venv
ENV PATH=/venv/bin:$PATH PYTHONUNBUFFERED=1 OFFSESSION_HOME=/var/lib/offsession
WORKDIR /var/lib/offsession
USER offsession
EXPOSE 8000
CMD ["gunicorn", "-c", "python:web.gunicorn_config", "-b", "0.0.0.0:8000", "-w", "4", "web:create_app()"]
