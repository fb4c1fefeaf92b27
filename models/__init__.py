"""SpriteForge: models."""
