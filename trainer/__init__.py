"""The improving side: datasets from feedback, LoRA training with TRL, publishing adapters."""
