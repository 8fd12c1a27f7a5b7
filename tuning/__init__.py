"""Nightly learning without forgetting: data from logged calls, protected-subspace calibration,
projected fine-tuning, forgetting evaluation and the gate (see the tuning issue)."""
