# A kvnet harness node: a Docker-in-Docker host running its own dockerd and the kvnet agent as that
# dockerd's network + IPAM plugin. Built FROM the agent image (deploy/Dockerfile), so the agent is the
# exact one users run; this adds Docker itself and a static busybox for the demo's containers.
ARG AGENT_IMAGE=kvnet/agent:0.1.0
# Docker Engine 28.5.2 (dockerd, docker-proxy, the docker CLI): the official image keeps its static
# binaries in /usr/local/bin; offline, deploy/compose/prepare-images.sh makes a stand-in holding the
# ones scripts/install-docker.sh built, at the same paths.
ARG DOCKER_IMAGE=docker:28.5.2-dind
FROM ${DOCKER_IMAGE} AS docker-engine

FROM ${AGENT_IMAGE}
# Debian's containerd (1.6) and runc (1.1.5), which Docker 28 runs on; iptables for dockerd; tini for
# docker-init; busybox-static becomes the image the demo runs (imported inside the node at start: no
# registry is needed).
RUN apt-get update \
 && apt-get install -y --no-install-recommends containerd runc iptables tini busybox-static ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=docker-engine /usr/local/bin/dockerd /usr/local/bin/docker-proxy /usr/local/bin/docker /usr/local/bin/
COPY deploy/compose/node-entrypoint.sh /usr/local/bin/kvnet-node
# The host setting names across hosts need (packages/agent/src/names/README.md): dockerd forwards what
# its embedded resolver does not know to kvnet's resolver address, for every container. dns-opts: a node
# is itself a container on a compose network, whose resolv.conf Docker writes with `options ndots:0`;
# inherited, any ndots makes the node's dockerd answer single-label names (c-node2) empty instead of
# forwarding them, so the node's own options are replaced (timeout:5 is glibc's default).
RUN mkdir -p /etc/docker && printf '{\n  "dns": ["169.254.53.53"],\n  "dns-opts": ["timeout:5"]\n}\n' > /etc/docker/daemon.json
RUN ln -sf /usr/bin/tini-static /usr/local/bin/docker-init \
 && chmod 0755 /usr/local/bin/kvnet-node \
 && dockerd --version && docker --version
# the inner dockerd's images and containers: a volume, so they live outside the node's own layers
VOLUME ["/var/lib/docker"]
ENTRYPOINT ["/usr/local/bin/kvnet-node"]
