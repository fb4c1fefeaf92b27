"""Workflow execution without a ComfyUI install, in one place.

``graph``       graph-format workflow <-> API prompt, ``/object_info`` from the pack's node classes, validation
``core_nodes``  LoadImage / SaveImage / PreviewImage stand-ins (ComfyUI's own are used inside ComfyUI)
``core_info``   ComfyUI's ``/object_info`` for the core nodes the shipped workflows use
``preflight``   header-only checks before a workflow runs (image sizes vs the model)
``runner``      the in-process runner behind ``spriteforge run``
``submit``      the client behind ``spriteforge submit`` (HTTP + WebSocket to a running ComfyUI)

Importing this package does no work; nothing here is imported by the nodes.
"""
