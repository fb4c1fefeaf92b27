"""SpriteForge: engines/torch_models."""
