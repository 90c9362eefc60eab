"""Fine-tuning of the chat model: dataset import and validation, LoRA training, CLI (python -m engine.finetune)."""
