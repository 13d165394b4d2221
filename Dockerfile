# Offsession: one image for web, worker, beat, migrate and the emulator.
FROM python:3.11-slim AS build
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared shared
COPY web web
COPY worker worker
COPY stripe_emulator stripe_emulator
RUN python -m venv /venv && /venv/bin/pip install --no-cache-dir .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 offsession
COPY --from=build /venv /venv
WORKDIR /app
COPY --chown=offsession:offsession celeryconfig.py ./
COPY --chown=offsession:offsession migrations migrations
COPY --chown=offsession:offsession shared shared
COPY --chown=offsession:offsession web web
COPY --chown=offsession:offsession worker worker
COPY --chown=offsession:offsession stripe_emulator stripe_emulator
ENV PATH=/venv/bin:$PATH PYTHONUNBUFFERED=1 OFFSESSION_HOME=/app
USER offsession
EXPOSE 8000
CMD ["gunicorn", "-b", "0.0.0.0:8000", "-w", "4", "web:create_app()"]
