# The one Heartline image: `heartline edge|worker|admin|migrate|backup ...` (compose.yaml picks the command).
FROM python:3.11-slim-bookworm

# pg_dump / pg_restore / psql must be of the server's major version (compose.yaml runs PostgreSQL 15,
# Debian bookworm's); git pushes backups to a git remote.
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-client-15 git openssh-client ca-certificates \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --system --create-home --home-dir /var/lib/heartline --shell /usr/sbin/nologin heartline \
    && mkdir -p /var/lib/heartline/backups && chown -R heartline:heartline /var/lib/heartline

WORKDIR /app
# Installed in place (editable): migrations read sql/ beside the heartline package.
COPY . .
RUN pip install -e . && python -m compileall -q heartline edge worker admin

USER heartline
ENV HEARTLINE_DATA_DIR=/var/lib/heartline \
    HEARTLINE_BACKUP_DIR=/var/lib/heartline/backups
ENTRYPOINT ["heartline"]
CMD ["edge"]
