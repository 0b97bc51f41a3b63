"""The on-device runtime: the MLX engine, models, quantization and fine-tuning."""
