# Offline stand-in for hashicorp/consul, made by deploy/compose/prepare-images.sh from a consul binary
# built from source (scripts/install-consul.sh). Only what the harness uses of the official image:
# `consul` as the entrypoint, so the compose command `agent -dev -client 0.0.0.0` works with both.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
COPY consul /usr/local/bin/consul
EXPOSE 8500
ENTRYPOINT ["/usr/local/bin/consul"]
CMD ["agent", "-dev", "-client", "0.0.0.0"]
