# seqstream worker / CLI image (used by docker-compose.yml for the worker, the topic creation step
# and the demo publisher). Kafka is external here, so the [local] extra (embedded broker) is not
# installed; rocksdict, for the default rocksdb:// table store, is a dependency of the package.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY pyproject.toml README.md LICENSE MANIFEST.in /src/
COPY state /src/state
COPY stream_app /src/stream_app
RUN pip install /src \
    && rm -rf /src

# An unprivileged user owning /data, the rocksdb data directory (SEQSTREAM_DATADIR); a volume
# mounted there starts with this ownership.
RUN useradd --create-home --uid 10001 seqstream \
    && mkdir -p /data \
    && chown seqstream:seqstream /data
USER seqstream
WORKDIR /data
ENV SEQSTREAM_DATADIR=/data \
    SEQSTREAM_WEB_HOST=0.0.0.0

EXPOSE 6066
ENTRYPOINT ["seqstream"]
CMD ["worker"]
