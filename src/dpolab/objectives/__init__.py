"""The objectives: pure loss functions (`losses/`, one module per family), the registry that
describes each (`registry`, filled by `methods`), the loss section's start-up rules (`checks`),
the sequence reductions every method shares (`sequences`: LD-DPO's sums, WPO's weights, the NLL),
and the preference and SFT objectives that turn layer-wise log-probs into a loss and per-pair
metrics (`preference`, `sft`, `metrics`)."""
