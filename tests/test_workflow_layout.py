"""The shipped graphs (example_workflows/NAME.json) are laid out so that nothing overlaps in the editor, also
after a run: a node's box is its title bar (plus the engine badge above model nodes) and its body,
which must hold its sockets, widgets and what it shows after a run (the frontend's image preview,
at least 220 px, under image-output nodes; the extension's swatch strip under palette nodes). Group
title bars must not touch a node or another group (its title bar or its box), and a node is either inside a group or
clear of it. The metrics are the editor's own (LiteGraph 20 px slots/widgets, 30 px titles), not the
builder's, so the builder's layout is checked, not restated.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spriteforge.execution import graph as G

REPO = Path(__file__).resolve().parents[1]
WF = REPO / "example_workflows"
GRAPHS = sorted(p for p in WF.glob("*.json"))

TITLE_H = 30            # LiteGraph.NODE_TITLE_HEIGHT
SLOT_H = 20             # LiteGraph.NODE_SLOT_HEIGHT
WIDGET_H = 24           # NODE_WIDGET_HEIGHT 20 + 4 px spacing
MULTILINE_H = 80        # a multiline text widget's minimum
BADGE_H = 16 + 3        # web/spriteforge.js drawBadge (16 px, 3 px above the title); the frontend's source badge
GROUP_TITLE_H = 24 * 1.4  # a group's title bar at font_size 24
IMAGE_PREVIEW_H = 220   # the frontend's ImagePreviewWidget.computeLayoutSize minHeight
SWATCH_H = 16 + 6       # web/spriteforge.js SWATCH_H plus the 6 px it keeps below the strip
IMAGE_NODES = {"PreviewImage", "SaveImage", "LoadImage", "SpriteForgePixelSaveIndexed", "SpriteForgePixelSpriteSheet"}
PALETTE_NODES = {"SpriteForgePixelPaletteExtract", "SpriteForgePixelPaletteLoad", "SpriteForgePixelQuantize"}


@pytest.fixture(scope="module")
def info():
    return G.object_info()


def test_every_workflow_is_checked():
    assert len(GRAPHS) >= 6 and all(p.stem for p in GRAPHS)


def needed_height(node: dict, info: dict) -> float:
    """The least body height the editor needs for this node after a run."""
    if node["type"] in ("Note", "MarkdownNote"):
        return MULTILINE_H
    desc = info.get(node["type"])
    if desc is None:  # a core node the standalone object_info does not describe: its saved size counts
        return 0
    slots = max(sum(1 for i in node.get("inputs", []) if "widget" not in i), len(node.get("outputs", [])))
    h = SLOT_H * slots
    for name in G.widget_slots(desc):
        if name is None:
            h += WIDGET_H  # control_after_generate / upload button
            continue
        _c, typ, opts = G.input_spec(desc, name)
        h += MULTILINE_H if (typ == "STRING" and opts.get("multiline")) else WIDGET_H
    if node["type"] in IMAGE_NODES:
        h += IMAGE_PREVIEW_H
    if node["type"] in PALETTE_NODES:
        h += SWATCH_H
    return h


def box(node: dict, info: dict) -> tuple:
    x, y = node["pos"]
    w, h = node["size"]
    h = max(h, needed_height(node, info))
    top = y - TITLE_H
    desc = info.get(node["type"])
    if node["type"].startswith("SpriteForge") or (desc and "SF_MODEL" in G.output_types(desc)):
        top -= BADGE_H  # the engine badge on model nodes, the frontend's node-source badge on the pack's nodes
    return (x, top, x + w, y + h)


def overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def inside(a, b) -> bool:
    return a[0] >= b[0] and a[1] >= b[1] and a[2] <= b[2] and a[3] <= b[3]


@pytest.mark.parametrize("path", GRAPHS, ids=[p.stem for p in GRAPHS])
def test_no_overlaps_after_a_run(path, info):
    graph = json.loads(path.read_text())
    nodes = graph["nodes"]
    boxes = {n["id"]: box(n, info) for n in nodes}
    problems = []
    for n in nodes:
        if n["type"] != "Note" and n["size"][1] < needed_height(n, info):
            problems.append(f"node {n['id']} {n['type']}: height {n['size'][1]} < {needed_height(n, info)} it needs after a run")
    ids = list(boxes)
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            if overlap(boxes[a], boxes[b]):
                problems.append(f"nodes {a} and {b} overlap: {boxes[a]} / {boxes[b]}")
    titles = []
    for g in graph["groups"]:
        gx, gy, gw, gh = g["bounding"]
        title = (gx, gy, gx + gw, gy + GROUP_TITLE_H)
        body = (gx, gy, gx + gw, gy + gh)
        for nid, bx in boxes.items():
            if overlap(title, bx):
                problems.append(f"group {g['title']!r}: title bar overlaps node {nid}")
            if overlap(body, bx) and not inside(bx, body):
                problems.append(f"group {g['title']!r}: node {nid} is partly inside")
        for other_title, t, other_body in titles:
            if overlap(title, other_body) or overlap(body, t):
                problems.append(f"groups {g['title']!r} and {other_title!r}: a box overlaps the other's title bar")
        titles.append((g["title"], title, body))
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


def test_overlap_check_can_fail(info):
    # the check itself: a preview right under a save node, as the shipped sprite_demo had before
    save = {"id": 1, "type": "SpriteForgePixelSaveIndexed", "pos": [0, 0], "size": [340, 120],
            "inputs": [], "outputs": []}
    sheet = {"id": 2, "type": "SpriteForgePixelSpriteSheet", "pos": [0, 200], "size": [340, 200],
             "inputs": [], "outputs": []}
    assert overlap(box(save, info), box(sheet, info))
    model = {"id": 3, "type": "SpriteForgeLoadModel", "pos": [0, 80], "size": [340, 200],
             "inputs": [], "outputs": [{"type": "SF_MODEL"}]}
    group_title = (-20, 20, 400, 20 + GROUP_TITLE_H)  # the old layout: group top 60 px above the node
    assert overlap(box(model, info), group_title)
