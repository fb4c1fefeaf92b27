"""The ``spriteforge`` command line: the same library code the nodes call."""
