"""SpriteForge: pixel."""
