# syntax=docker/dockerfile:1
#
# qbroker in a container: built in rust:bookworm, run from debian:bookworm-slim
# (glibc, CA certificates, nothing else), as an unprivileged user.
#
#   docker build -t qbroker .
#   docker compose -f deploy/compose/compose.yaml up -d     # see that file
#
# Inside the container qbroker listens on 5514 (no capability needed); the
# compose file publishes it on the host's 514. Keep the spool on a volume.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p qbroker \
 && strip target/release/qbroker

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10514 --user-group --home-dir /var/lib/qbroker \
      --no-create-home --shell /usr/sbin/nologin qbroker \
 && mkdir -p /var/lib/qbroker /etc/qbroker \
 && chown qbroker:qbroker /var/lib/qbroker \
 && chmod 0700 /var/lib/qbroker
COPY --from=build /src/target/release/qbroker /usr/local/bin/qbroker
COPY deploy/qbroker.toml /etc/qbroker/qbroker.toml
# as the systemd unit: no transparent huge pages for mimalloc's arena (RSS
# 2 MiB at a time, page zeroing; docs/hardening.md)
ENV MIMALLOC_ALLOW_THP=0
USER qbroker
VOLUME ["/var/lib/qbroker"]
EXPOSE 5514/tcp 9514/tcp
ENTRYPOINT ["/usr/local/bin/qbroker"]
CMD ["run", "--config", "/etc/qbroker/qbroker.toml", "--listen", "0.0.0.0:5514", "--metrics-listen", "0.0.0.0:9514"]
