"""worldline's jobs: the causal search over the world model, backfill and evaluation."""
