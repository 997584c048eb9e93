"""The service a telemetry resource belongs to.

OpenTelemetry SDKs name it (``service.name``). Telemetry a Collector gathers about workloads
rather than from them does not: the kubeletstats and k8s_cluster receivers, the filelog
receiver reading container logs, cAdvisor and kube-state-metrics series scraped by Prometheus
name the Kubernetes pod and workload instead (``k8s.deployment.name``, ``k8s.pod.name``, or the
``pod`` label). Read as "no service", all of it would fall on one ``unknown_service``, or on
the node, and a pod's CPU would be no evidence about the service the pod runs. The workload is
that service: Kubernetes names a Deployment's pods ``<deployment>-<pod-template-hash>-<suffix>``
and a StatefulSet's ``<statefulset>-<ordinal>``, and an SDK in that pod names its service after
the workload in the usual deployment.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

UNKNOWN_SERVICE = "unknown_service"

WORKLOAD_ATTRIBUTES = (
    "k8s.deployment.name",
    "k8s.statefulset.name",
    "k8s.daemonset.name",
    "k8s.cronjob.name",
    "k8s.job.name",
)
"""Resource attributes naming the workload a pod belongs to (OpenTelemetry's k8s semantic
conventions, as the k8sattributes processor sets them), the most specific owner first."""

# the suffixes Kubernetes appends to a workload's name to name its pods, most specific first: a
# Deployment's ReplicaSet hash then the pod's own five characters, the five characters alone (a
# DaemonSet, a bare ReplicaSet), or a StatefulSet's ordinal. The generated characters come from
# an alphabet without vowels, so a word of the workload's own name is not taken for one
GENERATED_CHARACTERS = "bcdfghjklmnpqrstvwxz2456789"
_GENERATED = f"[{GENERATED_CHARACTERS}]"
DEPLOYMENT_SUFFIX = re.compile(rf"-{_GENERATED}{{6,10}}-{_GENERATED}{{5}}$")
DAEMON_SUFFIX = re.compile(rf"-{_GENERATED}{{5}}$")
ORDINAL_SUFFIX = re.compile(r"-(?:0|[1-9][0-9]*)$")
POD_SUFFIXES = (DEPLOYMENT_SUFFIX, DAEMON_SUFFIX, ORDINAL_SUFFIX)
REPLICA_SET_SUFFIX = re.compile(rf"-{_GENERATED}{{6,10}}$")


def is_unnamed(service: object) -> bool:
    """An SDK's default when nothing named the service (``unknown_service``,
    ``unknown_service:java``), or no name at all."""
    return not service or str(service).split(":", 1)[0] == UNKNOWN_SERVICE


def workload_names(pod: str) -> list[str]:
    """The workloads a pod's generated name may say it belongs to, most specific first (to
    look up among known names: a DaemonSet's five characters alone could be a word of a name
    of its own)."""
    return [suffix.sub("", pod) for suffix in POD_SUFFIXES if suffix.search(pod)]


def workload_of_pod(pod: str) -> str:
    """The Deployment or StatefulSet a pod's generated name says it belongs to; the pod's own
    name when it follows neither pattern (a bare pod, a DaemonSet's, whose suffix alone cannot
    be told from a name's own last word)."""
    for suffix in (DEPLOYMENT_SUFFIX, ORDINAL_SUFFIX):
        if suffix.search(pod):
            return suffix.sub("", pod)
    return pod


def service_of(resource: Mapping[str, Any]) -> str:
    """The service a resource's telemetry is about: its ``service.name``; without one (or
    with an SDK's default), its Kubernetes workload, named by the resource or by its pod's
    generated name; else the SDK's default, or ``unknown_service``."""
    named = resource.get("service.name")
    if not is_unnamed(named):
        return str(named)
    for key in WORKLOAD_ATTRIBUTES:
        if resource.get(key):
            return str(resource[key])
    replica_set = resource.get("k8s.replicaset.name")
    if replica_set:
        return REPLICA_SET_SUFFIX.sub("", str(replica_set))
    pod = resource.get("k8s.pod.name")
    if pod:
        return workload_of_pod(str(pod))
    return str(named) if named else UNKNOWN_SERVICE
