# MoltStreet web image: uvicorn workers serving the ASGI app (bench/servers.py: 1.4x daphne's orders/s). Everything is
# installed at build time: a container needs no network but its database and Redis.
# docker-compose.yml runs this image as the web server, the scheduler and the one-shot migration (README "Operations").
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY requirements.txt .
RUN pip install -r requirements.txt
# The Python SDK (client/, moltstreet-client), which the server's demo traders use.
COPY client ./client
RUN pip install ./client

COPY . .
# A throwaway key for these commands: settings refuse to load without a strong SECRET_KEY when DEBUG is off, and
# the image must not carry one (each deployment sets its own). build_client_wheel: the SDK's wheel, served at /simple/
# (moltstreet/package_index.py), built offline with the setuptools of requirements.txt into CLIENT_WHEEL_DIR.
RUN SECRET_KEY="$(python -c 'import secrets; print(secrets.token_urlsafe(50))')" DATABASE_URL=sqlite:////tmp/build.sqlite3 \
    sh -c 'python manage.py collectstatic --noinput && python manage.py build_client_wheel'

EXPOSE 8000
# Migrations run once per deploy (`docker run ... python manage.py migrate`, docker-compose.yml's migrate service),
# not in every web process.
# WEB_WORKERS: one per core. --no-access-log: the server's own log would write query strings (keys) verbatim;
# moltstreet.middleware logs requests with secrets redacted. Several workers need REDIS_URL (the channel layer).
# LOG_FORMAT=json: one JSON object per line, uvicorn's own lines included (--log-config). PROMETHEUS_MULTIPROC_DIR:
# /metrics sums every worker's values (moltstreet/metrics.py). --timeout-graceful-shutdown 8: on SIGTERM the requests
# in flight get 8 s, then uvicorn cancels what is left and exits, inside docker-compose.yml's stop_grace_period
# (15 s), rather than waiting without end and being SIGKILLed.
ENV WEB_WORKERS=2 WEB_HOST=0.0.0.0 WEB_PORT=8000 LOG_FORMAT=json PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus
CMD ["sh", "-c", "exec uvicorn moltstreet.asgi:application --host ${WEB_HOST} --port ${WEB_PORT} --workers ${WEB_WORKERS} --no-access-log --timeout-keep-alive 75 --timeout-graceful-shutdown 8 --log-config moltstreet/uvicorn-logging.json"]
