# ZooKeeper for the harness, from Debian's package (3.8, Java). Standalone, no auth: a test fixture.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends zookeeper \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/zookeeper-kv \
 && printf 'tickTime=2000\ndataDir=/var/lib/zookeeper-kv\nclientPort=2181\nadmin.enableServer=false\n4lw.commands.whitelist=ruok\n' > /etc/zookeeper/conf/kvnet-zoo.cfg
EXPOSE 2181
CMD ["sh", "-c", "exec java -cp '/usr/share/java/*:/etc/zookeeper/conf' org.apache.zookeeper.server.quorum.QuorumPeerMain /etc/zookeeper/conf/kvnet-zoo.cfg"]
