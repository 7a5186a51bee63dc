# RabbitMQ (Debian's rabbitmq-server) for async orders: Barbican's API nodes cast orders,
# barbican-worker consumes them. Configuration is rendered per environment by the harness.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
LABEL barbican-harness.image=rabbitmq
ARG RUNTIME_PACKAGES="rabbitmq-server"
COPY apt-install.sh /usr/local/sbin/harness-apt-install
COPY debs/runtime/ /tmp/debs/
RUN sh /usr/local/sbin/harness-apt-install /tmp/debs $RUNTIME_PACKAGES
EXPOSE 5672
CMD ["/usr/lib/rabbitmq/bin/rabbitmq-server"]
