# Test-only stand-in for prom/prometheus, which CI cannot pull: Debian's prometheus package on the
# locally made debian:bookworm-slim (scripts/deploy_check.sh builds it as
# seedserve-ci/prometheus:bookworm). Same entrypoint, user and data folder as the official image,
# so docker-compose.yml's `command:` works on both.
FROM debian:bookworm-slim
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends prometheus \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /prometheus \
 && chown nobody:nogroup /prometheus
USER 65534:65534
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
