"""A Bytewax cluster from a Kubernetes StatefulSet: who am I, who are my peers.

A StatefulSet names its pods ``<name>-0`` … ``<name>-<replicas-1>``, and a
headless Service gives each a stable DNS name ``<pod>.<service>``. So a pod
knows its Bytewax process id from its own name (the ordinal after the last
``-``) and every peer's address from the replica count and the Service,
with nothing but settings from a ConfigMap and its own hostname.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ORDINAL = re.compile(r"^(?P<name>.+)-(?P<ordinal>\d+)$")

DEFAULT_ADDRESS = "{pod}.{service}:{port}"


@dataclass(frozen=True)
class ClusterPlace:
    process_id: int
    addresses: list[str]

    @property
    def joined(self) -> str:
        """The addresses as ``tilepipe run --addresses`` takes them."""
        return ";".join(self.addresses)


def place_from_hostname(
    hostname: str,
    replicas: int,
    *,
    service: str,
    port: int,
    address: str = DEFAULT_ADDRESS,
) -> ClusterPlace:
    """This pod's process id and the cluster's addresses, from the pod's hostname.

    ```python
    place_from_hostname("tilepipe-1", 3, service="tilepipe-peers", port=2101)
    # ClusterPlace(process_id=1, addresses=["tilepipe-0.tilepipe-peers:2101", ...])
    ```

    :arg hostname: the pod name (``metadata.name``; the hostname of a StatefulSet pod).
    :arg replicas: the StatefulSet's replicas: the cluster size.
    :arg service: the headless Service that publishes the pods' addresses.
    :arg port: the port each process listens on for its peers.
    :arg address: a peer's address; ``{pod}``, ``{name}``, ``{ordinal}``,
        ``{service}`` and ``{port}`` are filled in.
    """
    host = hostname.split(".", 1)[0]
    m = _ORDINAL.match(host)
    if m is None:
        raise ValueError(
            f"hostname {hostname!r} does not end in a StatefulSet ordinal (NAME-N); set"
            " TILEPIPE_POD_NAME to the pod name, or run without TILEPIPE_CLUSTER_REPLICAS"
        )
    name, ordinal = m.group("name"), int(m.group("ordinal"))
    if replicas < 1:
        raise ValueError(f"cluster replicas must be at least 1, not {replicas}")
    if ordinal >= replicas:
        raise ValueError(
            f"pod {host!r} has ordinal {ordinal} but the cluster has {replicas} replicas;"
            " TILEPIPE_CLUSTER_REPLICAS must equal the StatefulSet's replicas"
        )
    addresses = [
        address.format(pod=f"{name}-{i}", name=name, ordinal=i, service=service, port=port)
        for i in range(replicas)
    ]
    return ClusterPlace(ordinal, addresses)
