"""worldline's streaming side: the platform (broker, topics, settings, CLI) and its stages.

The code follows the data: receivers and ingest -> segments -> baselines -> graph.
The causal search and batch jobs live in ``jobs/``; topic and segment contracts in ``schemas/``.
"""
