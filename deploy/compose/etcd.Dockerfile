# etcd for the harness, from Debian's package (etcd-server 3.4, v3 API). Single member, no auth, no TLS:
# a test fixture, not a production store.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends etcd-server \
 && rm -rf /var/lib/apt/lists/*
EXPOSE 2379
CMD ["etcd", "--name", "kv", "--data-dir", "/var/lib/etcd/kv", \
     "--listen-client-urls", "http://0.0.0.0:2379", "--advertise-client-urls", "http://etcd:2379", \
     "--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380", \
     "--initial-cluster", "kv=http://127.0.0.1:2380"]
