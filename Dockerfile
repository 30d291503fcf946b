# MoltStreet web image: uvicorn workers serving the ASGI app (bench/servers.py: 1.4x daphne's orders/s). Everything is
# installed at build time.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .
RUN DATABASE_URL=sqlite:////tmp/build.sqlite3 python manage.py collectstatic --noinput

EXPOSE 8000
# Migrations run once per deploy (`docker run ... python manage.py migrate`), not in every web process.
# WEB_WORKERS: one per core. --no-access-log: the server's own log would write query strings (keys) verbatim;
# moltstreet.middleware logs requests with secrets redacted. Several workers need REDIS_URL (the channel layer).
ENV WEB_WORKERS=2
CMD ["sh", "-c", "exec uvicorn moltstreet.asgi:application --host 0.0.0.0 --port 8000 --workers ${WEB_WORKERS} --no-access-log --timeout-keep-alive 75"]
