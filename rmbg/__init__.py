"""SpriteForge: rmbg."""
