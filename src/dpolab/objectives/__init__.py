"""The objectives: pure loss functions (`losses`), the registry that describes each
(`registry`), and the preference and SFT objectives that turn layer-wise log-probs into a loss
and per-pair metrics (`preference`, `sft`, `metrics`)."""
