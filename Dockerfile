# syntax=docker/dockerfile:1
# Build stage: compile wheels for everything in requirements/base.txt.
FROM python:3.13-slim AS build
WORKDIR /build
COPY requirements/base.txt requirements/base.txt
RUN python -m venv /venv \
    && /venv/bin/pip install --no-cache-dir --disable-pip-version-check -r requirements/base.txt

# Runtime stage: the virtualenv and the code, run as an unprivileged user.
FROM python:3.13-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/venv/bin:$PATH \
    PORT=8080 \
    ENV=production
RUN groupadd --system --gid 10001 taskflow && useradd --system --uid 10001 --gid taskflow --home-dir /app taskflow
WORKDIR /app
COPY --from=build /venv /venv
COPY --chown=taskflow:taskflow . /app
# collectstatic needs settings to load; these values exist only for this build step.
RUN ENV=development DB_DSN=sqlite:////tmp/build.sqlite3 python manage.py collectstatic --no-input \
    && rm -f /tmp/build.sqlite3
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('PORT', '8080')}/health\", timeout=4)"]
# The API; the compose file runs the workers from the same image with `manage.py runworkers`.
CMD ["gunicorn", "-c", "gunicorn.conf.py", "taskflow_project.wsgi"]
