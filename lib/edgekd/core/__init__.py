"""Facts, files, inputs, models, losses and metrics that every stage shares (no stage, no pipeline)."""
