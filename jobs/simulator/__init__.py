"""Incident simulator: realistic microservice telemetry with injected faults and ground truth.

Read in the order the data flows:

- ``topology``   services, operations, calls, virtual dependencies, pods on hosts (from a seed)
- ``traffic``    edge request rate: daily and weekly seasonality plus slow noise
- ``engine``     trace templates, the per-slice resource model, vectorized request simulation
- ``faults``     the fault library (what each fault does to the system) and its labels
- ``changes``    deploys, config pushes, flag flips, scaling: benign schedule and fault changes
- ``scenarios``  named scenarios: which fault, where (picked by the seed among busy entities)
- ``telemetry``  OTLP spans (numpy-patched protobuf templates), span shapes, pod resources
- ``metrics``    OTLP metrics: duration histograms from spans, resource gauges, host CPU
- ``logs``       OTLP logs from per-service templates, error logs, fault log lines
- ``alerts``     SLO-burn alerts on user-facing services as Alertmanager webhook payloads
- ``simulation`` one run advanced slice by slice into records per topic, plus the labels
- ``bundle``     replay bundles on disk; ``sink`` sends records to Kafka; ``cli`` the commands
"""
