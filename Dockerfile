# The image the Kubernetes manifests run (k8s/statefulset.yaml, image "tilepipe"):
#   docker build -t ghcr.io/tilepipe/tilepipe:0.1.0 .
# Bytewax 0.21 ships wheels for CPython 3.8-3.12 only.
FROM python:3.11-slim-bookworm AS build
RUN python -m venv /opt/tilepipe
COPY pyproject.toml README.md /src/
COPY tilepipe /src/tilepipe
COPY dataflows /src/dataflows
COPY operators /src/operators
COPY sinks /src/sinks
COPY sources /src/sources
COPY ingress /src/ingress
COPY render /src/render
COPY gateway /src/gateway
COPY tiles /src/tiles
COPY demo /src/demo
RUN /opt/tilepipe/bin/pip install --no-cache-dir /src

FROM python:3.11-slim-bookworm
COPY --from=build /opt/tilepipe /opt/tilepipe
RUN groupadd --gid 10001 tilepipe \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin tilepipe \
    && mkdir -p /var/lib/tilepipe/recovery && chown -R 10001:10001 /var/lib/tilepipe
ENV PATH=/opt/tilepipe/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /var/lib/tilepipe
EXPOSE 9464 2101
# SIGTERM drains (sources stop, held events released, sinks flush, last snapshot).
STOPSIGNAL SIGTERM
ENTRYPOINT ["tilepipe"]
CMD ["run"]
