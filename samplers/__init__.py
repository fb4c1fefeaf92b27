"""SpriteForge: samplers."""
