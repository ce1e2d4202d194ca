# A kvnet harness node: a Docker-in-Docker host running its own dockerd and the kvnet agent as that
# dockerd's network + IPAM plugin. Built FROM the agent image (deploy/Dockerfile), so the agent is the
# exact one users run; this adds Docker itself and a static busybox for the demo's containers.
ARG AGENT_IMAGE=kvnet/agent:0.1.0
FROM ${AGENT_IMAGE}
# docker.io pulls in containerd, runc and iptables; busybox-static becomes the image the demo runs
# (imported inside the node at start: no registry is needed); iputils-ping for debugging from the node.
RUN apt-get update \
 && apt-get install -y --no-install-recommends docker.io busybox-static ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY deploy/compose/node-entrypoint.sh /usr/local/bin/kvnet-node
RUN chmod 0755 /usr/local/bin/kvnet-node
# the inner dockerd's images and containers: a volume, so they live outside the node's own layers
VOLUME ["/var/lib/docker"]
ENTRYPOINT ["/usr/local/bin/kvnet-node"]
