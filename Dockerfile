# MoltStreet web image: daphne serving the ASGI app. Everything is installed at build time.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .
RUN DATABASE_URL=sqlite:////tmp/build.sqlite3 python manage.py collectstatic --noinput

EXPOSE 8000
# Migrations run once per deploy (`docker run ... python manage.py migrate`), not in every web process.
# -v 0: no daphne access log, which would write query strings (keys) verbatim; moltstreet.middleware logs requests.
CMD ["daphne", "-v", "0", "-b", "0.0.0.0", "-p", "8000", "moltstreet.asgi:application"]
