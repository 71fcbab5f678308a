# claudemesh-gateway container image.
#   docker build -t claudemesh-gateway .
#   docker run -v /etc/claudemesh-gateway:/etc/claudemesh-gateway:ro -v cmgw-state:/var/lib/claudemesh-gateway \
#              -p 127.0.0.1:8080:8080 claudemesh-gateway
# The config's [server] state_dir should point at /var/lib/claudemesh-gateway (a volume: it holds the
# durable outbox, cursors and the mesh session identity), and [server] host at 0.0.0.0 inside the container.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY core ./core
COPY plugins ./plugins
RUN pip install --no-cache-dir --upgrade pip build && python -m build --wheel --outdir /dist

FROM python:3.11-slim
RUN useradd --system --home /var/lib/claudemesh-gateway --shell /usr/sbin/nologin claudemesh \
 && mkdir -p /var/lib/claudemesh-gateway /etc/claudemesh-gateway \
 && chown claudemesh:claudemesh /var/lib/claudemesh-gateway
COPY --from=build /dist/*.whl /tmp/
# with the postgres extra: the same image runs on SQLite or as one of several PostgreSQL replicas
RUN pip install --no-cache-dir "$(ls /tmp/*.whl)[postgres]" && rm /tmp/*.whl
USER claudemesh
WORKDIR /var/lib/claudemesh-gateway
VOLUME ["/var/lib/claudemesh-gateway"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/-/health', timeout=4).status == 200 else 1)"
# Exit codes: 0 clean stop, 1 unexpected, 2 config error, 3 plugin error, 4 startup error.
ENTRYPOINT ["claudemesh-gateway", "-c", "/etc/claudemesh-gateway/config.toml"]
CMD ["run"]
