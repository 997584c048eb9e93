"""The causal search job: alerts in, ranked, calibrated, evidence-backed causes out."""
