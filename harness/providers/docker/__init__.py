"""Docker provider: every service of an environment is a container.

    Environment.up("environments/simple-crypto.yaml", provider="docker")

One container per service (MariaDB, Keystone, each Barbican API node, the worker, the
PyKMIP server, OpenBao, RabbitMQ, the fault proxy) on a private bridge network of its own; the
SoftHSM token on a named volume shared by the Barbican containers. Every container,
network and volume carries the label ``barbican-harness.run=<run_id>``: `down` removes
what carries it, so it works after the harness was SIGKILLed half-way through `up`.

Images come from harness.images (built without a registry on first use, then reused).

Same start order as the local provider (harness/providers/sequence.py), same readiness rules
and the same config rendering: the Jinja templates and BarbicanConfig, given views of
the services as Barbican *inside the network* reaches them (``mariadb:3306``,
``http://keystone:5000/v3``, ``kmip:5696``, or the proxy's links). Only what differs
between inside and outside is parametrised: the run directory is bind-mounted at the
same path in every container, so every path in a rendered file is valid on both sides
(config, logs, fernet keys, KMIP certificates, the shim's control file), and the host
reaches each service on a port published on 127.0.0.1 only (picked free at run time).

Logs: each container's output goes to <run_dir>/logs/<service>.log, as with the local
provider, so `barbican-harness logs` works unchanged.

Faults: `node_kill`/`node_pause` map to container kill/pause (`signal_service`), a
config fault (KEK mismatch, wrong PIN) is a re-rendered config and a container restart,
HSM faults go through the same shim control file (its directory is bind-mounted), and
`partition` (harness.faults.docker_net) disconnects a node from the network.

Rooms, one job each:
  environment  DockerProvider: assembles the service containers from the topology, up in the
               shared order, state, adoption, restarts and signals for faults, down
  containers   the daemon, labels and names; run / one-shot / exec a container; remove by label
  network      addresses inside the network, the published host address, partitions
  service      ContainerService: one long-running container (start, stop, signals, readiness),
               configs rendered to listen inside a container
  database, keystone, hsm, kmip, vault, rabbitmq, proxy, barbican: each service's container
               and its address as Barbican reaches it inside the network (``*Inside``); what the
               local and docker variants share lives in harness/services/* (public methods)
"""

from harness.providers.docker.containers import (LABEL_ROLE, LABEL_RUN, LABEL_SERVICE, Runtime, container_name,
                                                 labelled, remove_labelled, run_labels)
from harness.providers.docker.environment import DockerProvider
from harness.providers.docker.network import (AMQP_PORT, BARBICAN_PORT, DB_PORT, HOST, KEYSTONE_PORT, KMIP_PORT,
                                              LINK_PORTS, LINK_UPSTREAMS, PROXY_API_PORT, VAULT_CLUSTER_PORT,
                                              VAULT_PORT)

__all__ = ["AMQP_PORT", "BARBICAN_PORT", "DB_PORT", "HOST", "KEYSTONE_PORT", "KMIP_PORT", "LABEL_ROLE", "LABEL_RUN",
           "LABEL_SERVICE", "LINK_PORTS", "LINK_UPSTREAMS", "PROXY_API_PORT", "VAULT_CLUSTER_PORT", "VAULT_PORT",
           "DockerProvider", "Runtime", "container_name", "labelled", "remove_labelled", "run_labels"]
