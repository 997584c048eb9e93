"""The dependency a caller's client metric describes, named as the dependency graph names it.

OpenTelemetry client metrics (``db.client.*``, ``http.client.*``, ``rpc.client.*``,
``messaging.*``) carry their peer in their attributes (``db.system``, ``db.namespace``,
``server.address``, ``peer.service``, ``messaging.destination.name``); a service mesh's request
metrics as the calling side reports them, in ``destination_workload``. A series of such a metric
is the caller's view of that dependency: evidence about it for the causal search, and evidence
of the dependency itself for the graph when no trace shows it (a metrics-only deployment).

A signal's qualifiers are the ``{key=value,...}`` part of its name (``worldmodel.signals``);
names follow the graph's virtual-node convention (``worldmodel.graph``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping

from pipeline.worldmodel.graph import CACHE_SYSTEMS, K8S_SERVICE_DNS

QUALIFIER = re.compile(r"\{([^}]*)\}")
K8S_DNS = re.compile(K8S_SERVICE_DNS)


def qualifiers(signal: str) -> dict[str, str]:
    """The ``{key=value,...}`` attributes in a signal's name."""
    match = QUALIFIER.search(signal)
    if match is None:
        return {}
    out = {}
    for part in match.group(1).split(","):
        key, sep, value = part.partition("=")
        if sep:
            out[key] = value
    return out


@functools.lru_cache(maxsize=65_536)
def client_metric_peer(signal: str) -> str | None:
    """The dependency (an entity key) a client-side metric describes; None for a series about
    its own entity (a server metric, a consumer's own processing, a span or log signal)."""
    if signal.startswith(("span.", "edge.", "log.")):
        return None
    q = qualifiers(signal)
    host = q.get("server.address") or None
    if host:
        short = K8S_DNS.match(host)
        host = short.group(1) if short else host
    namespace = q.get("db.namespace") or q.get("db.name") or None
    if namespace is not None and namespace.isdigit():
        namespace = None  # a Redis database index names no dependency
    system = q.get("db.system") or q.get("db.system.name")
    if q.get("messaging.system"):
        if ".process." in signal or ".receive." in signal or "consume" in signal:
            return None  # the consumer's own processing: evidence about the consumer
        destination = q.get("messaging.destination.name") or q.get("messaging.destination") or host
        return f"queue:{q['messaging.system']}:{destination}" if destination else None
    if system:
        if system in CACHE_SYSTEMS:
            part = host or namespace
            return f"cache:{system}:{part}" if part else f"cache:{system}"
        part = namespace or host
        return f"database:{system}:{part}" if part else f"database:{system}"
    if q.get("peer.service"):
        return f"external:{q['peer.service']}"
    mesh = q.get("destination_workload") or q.get("destination_service_name")
    if mesh and mesh != "unknown" and q.get("reporter", "source") == "source":
        # a service mesh's request metrics as the caller's sidecar reports them (Istio's
        # reporter="source"); the callee's sidecar reports the same requests as its own
        return f"external:{mesh}"
    if host and (signal.startswith(("http.client", "rpc.client")) or ".client." in signal):
        return f"external:{host}"
    return None


# an RPC's full method as client and server spans name it (OpenTelemetry's
# ``{rpc.service}/{rpc.method}``), with the prefixes instrumentations add: a leading slash
# (``/hipstershop.CartService/GetCart``) or a framework tag (``grpc.hipstershop.CartService/...``)
RPC_METHOD = re.compile(r"^/?(?:[\w-]+\.)*([A-Za-z_]\w*)/([A-Za-z_]\w*)$")


def rpc_method(operation: str) -> str | None:
    """``Service/Method`` of an RPC operation name, without package or prefixes; None for a
    name that is no RPC method (an HTTP route with its verb, a free-form name)."""
    found = RPC_METHOD.match(operation)
    return f"{found.group(1)}/{found.group(2)}" if found else None


def operation_servers(entities: Iterable[str]) -> dict[str, dict[str, str]]:
    """RPC method (``rpc_method``) -> the services serving it (``service:<name>``) -> the
    server operation entity answering it there (``operation:<service> <name>``, the first
    spelling).

    A client span that names no peer attribute is named by its operation
    (``operation:hipstershop.CartService/GetCart``); the service whose server spans carry the
    same method is the dependency it called, even when no trace pairs the two spans (the
    callee's traces were sampled out or lost). Several services may serve one method (two
    versions of a service side by side, copies per tenant or shard): ``peer_entity`` then
    picks among them by whom the caller is known to call."""
    servers: dict[str, dict[str, str]] = {}
    for entity in sorted({e for e in entities if e.startswith("operation:")}):
        service, sep, name = entity.removeprefix("operation:").partition(" ")
        method = rpc_method(name) if sep else None
        if method is not None:
            servers.setdefault(method, {}).setdefault(f"service:{service}", entity)
    return servers


def peer_entity(
    peer: str,
    known_services: set[str] | frozenset[str],
    operations: Mapping[str, Mapping[str, str]] | None = None,
    callees: Iterable[str] = (),
    answered_by: Mapping[str, str] | None = None,
) -> str:
    """The entity a caller's peer is, seen from both sides: an ``external:<name>`` peer that
    is a known service is that service (its server metrics or spans name it); an
    ``operation:<method>`` peer is the server operation answering that RPC method
    (``operations``, from ``operation_servers``) when one service serves it, or when exactly
    one of those serving it is among ``callees``, the services the caller is known to call
    (its dependencies in the graph, learned from traces that pair its client spans with the
    server spans answering them). A peer that traces showed a known service answering
    (``answered_by``, the graph's ``peer_services``: a client span's peer name, such as its
    ``peer.service`` or an address, paired with the server span of the service that answered
    it) is that service, whatever name the caller gave it."""
    kind, _, name = peer.partition(":")
    if kind == "external" and f"service:{name}" in known_services:
        return f"service:{name}"
    answering = (answered_by or {}).get(peer)
    if answering is not None and f"service:{answering}" in known_services:
        return f"service:{answering}"
    if kind == "operation" and operations:
        method = rpc_method(name)
        servers = operations.get(method) if method is not None else None
        if servers:
            if len(servers) == 1:
                return next(iter(servers.values()))
            calls = set(callees)
            called = [op for service, op in servers.items() if service in calls]
            if len(called) == 1:
                return called[0]
    return peer
