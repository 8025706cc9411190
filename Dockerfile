# syntax=docker/dockerfile:1
# One image for every wsm process: `wsm gateway`, `wsm worker`, `wsm api` (compose.yaml picks
# the subcommand). Two stages: the first installs wsm and its dependencies into a virtualenv,
# the second copies only that virtualenv onto a clean slim Python, so no pip, build cache or
# source tree ships in the runtime image.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/wsm
ENV PATH=/opt/wsm/bin:$PATH
WORKDIR /src
# Everything `pip install .` reads (see .dockerignore for what is left out).
COPY pyproject.toml README.md ./
COPY wsm ./wsm
COPY shared ./shared
COPY gateway ./gateway
COPY worker ./worker
COPY engine ./engine
COPY api ./api
# A regular (not editable) install: the runtime stage gets no source tree.
RUN pip install . && pip check

FROM ${PYTHON_IMAGE} AS runtime
# A fixed non-root uid/gid, so volume ownership is the same on every host.
RUN groupadd --system --gid 10001 wsm \
    && useradd --system --uid 10001 --gid wsm --home-dir /var/lib/wsm --shell /usr/sbin/nologin wsm \
    && mkdir -p /var/lib/wsm/spool /var/lib/wsm/media \
    && chown -R wsm:wsm /var/lib/wsm
COPY --from=build /opt/wsm /opt/wsm
ENV PATH=/opt/wsm/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    WSM_SPOOL_DIR=/var/lib/wsm/spool \
    WSM_MEDIA_DIR=/var/lib/wsm/media
# No VOLUME here: only the gateway has a spool, and compose mounts a named volume on it (which
# starts as a copy of this directory, owned by wsm).
WORKDIR /var/lib/wsm
USER wsm:wsm
EXPOSE 8080 8081 9091
ENTRYPOINT ["wsm"]
CMD ["gateway", "--host", "0.0.0.0", "--port", "8080"]
