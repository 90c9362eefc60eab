"""The engine: models, scheduling, prompts and the store; it knows no chat platform."""
