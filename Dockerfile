# The one Heartline image: `heartline edge|worker|admin|migrate|backup ...` (compose.yaml picks the command).
# Built from the wheel, not from an editable install: the image holds the installed package (with its
# sql/ migrations as heartline.sql) and the locked dependencies of the three roles, not the source tree.

FROM python:3.11-slim-bookworm AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY sql sql
COPY heartline heartline
COPY edge edge
COPY worker worker
COPY admin admin
COPY loadtests loadtests
RUN pip wheel --no-deps --wheel-dir /dist .

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

# Locked versions and hashes of the edge, worker and admin extras (.ci/lock), then the wheel itself
# without resolving anything again.
COPY requirements/image.txt /tmp/requirements.txt
COPY --from=wheel /dist /tmp/dist
RUN pip install --require-hashes -r /tmp/requirements.txt \
    && pip install --no-deps /tmp/dist/heartline-*.whl \
    && rm -rf /tmp/dist /tmp/requirements.txt

USER heartline
WORKDIR /var/lib/heartline
ENV HEARTLINE_DATA_DIR=/var/lib/heartline \
    HEARTLINE_BACKUP_DIR=/var/lib/heartline/backups
ENTRYPOINT ["heartline"]
CMD ["edge"]
