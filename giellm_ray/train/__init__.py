"""Fine-tuning on Ray Train with DeepSpeed: typed config, DeepSpeed config, worker loop, driver."""
