"""SpriteForge: engines."""
