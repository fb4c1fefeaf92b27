"""Rough edges found when the pack was tried as a new user would (issue 13), one test each."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WF = REPO / "example_workflows"


# --------------------------------------------------------------------------- shipped LoRA in the dropdowns
def test_shipped_lora_is_listed_and_resolves():
    from spriteforge.nodes import lora as L

    name = "spriteforge-demo night (built-in)"
    assert name in L.lora_choices() and name in L.lora_choices(L.NONE)
    for node in (L.ApplyLoRA, L.LoRAInfo):
        combo = next(i for i in node.define_schema().inputs if i.id == "lora_name")
        assert name in combo.options
    assert L.resolve_lora(name) == REPO / "demo_model" / "loras" / "night.safetensors"
    report = L.LoRAInfo.execute(name, False).args[0]
    assert "pixart" in report and "rank 4" in report


# --------------------------------------------------------------------------- inspect names BiRefNet files
def _header_only_safetensors(path: Path, shapes: dict, dtype: str = "F16") -> Path:
    """A valid safetensors file with these tensors (all zeros; written sparse, so a 440 MB release takes no disk)."""
    size = {"F16": 2, "F32": 4}[dtype]
    header, off = {}, 0
    for k, shape in shapes.items():
        n = size
        for d in shape:
            n *= int(d)
        header[k] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        f.truncate(8 + len(raw) + off)
    return path


@pytest.fixture(scope="module")
def birefnet_shapes():
    torch = pytest.importorskip("torch")
    from spriteforge.engines.torch_models import birefnet as bn

    out = {}
    for name, cfg in (("swin_l", bn.SWIN_L), ("swin_t", bn.SWIN_T)):
        with torch.device("meta"):  # the release's module tree and shapes, no memory
            m = bn.BiRefNet(cfg)
        out[name] = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    return out


@pytest.mark.parametrize("fname,backbone,variant", [
    ("model.safetensors", "swin_l", "general"),            # ZhengPeng7/BiRefNet's file as downloaded
    ("BiRefNet-general-epoch_244.safetensors", "swin_l", "general"),
    ("BiRefNet_lite.safetensors", "swin_t", "lite"),
    ("BiRefNet_HR.safetensors", "swin_l", "HR"),
])
def test_inspect_names_official_birefnet_files(tmp_path, capsys, birefnet_shapes, fname, backbone, variant):
    from spriteforge.cli.main import main

    p = _header_only_safetensors(tmp_path / fname, birefnet_shapes[backbone])
    assert main(["inspect", str(p), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "birefnet" and out["family"] == "birefnet" and out["variant"] == variant
    assert out["config"]["backbone"] == {"swin_l": "swin_v1_l", "swin_t": "swin_v1_t"}[backbone]
    assert out["parameters"] > 40_000_000 and out["dtype"] in ("float16", "F16")
    assert main(["inspect", str(p)]) == 0
    assert "kind:       birefnet" in capsys.readouterr().out


def test_inspect_still_refuses_unknown_files(tmp_path, capsys):
    from spriteforge.cli.main import main

    p = _header_only_safetensors(tmp_path / "mystery.safetensors", {"foo.weight": (4, 4)})
    assert main(["inspect", str(p)]) != 0
    assert "UNSUPPORTED_ARCHITECTURE" in capsys.readouterr().err


# --------------------------------------------------------------------------- global flags after the sub-command
def test_global_flags_after_the_subcommand():
    from spriteforge.cli.main import build_parser

    p = build_parser()
    for argv in (["-q", "--debug", "doctor"], ["doctor", "-q", "--debug"], ["doctor", "--quiet", "--debug"]):
        a = p.parse_args(argv)
        assert a.quiet and a.debug and not a.log_json, argv
    a = p.parse_args(["--log-json", "inspect", "x"])  # given before, not repeated after: kept
    assert a.log_json and not a.quiet
    assert not p.parse_args(["doctor"]).quiet


# --------------------------------------------------------------------------- batch file names sort
def test_generate_batch_names_are_zero_padded_and_sort(tmp_path, capsys):
    pytest.importorskip("torch")
    if not (REPO / "demo_model" / "model_index.json").exists():
        pytest.skip("demo_model/ is not present")
    from spriteforge.cli.main import main

    out = tmp_path / "out"
    assert main(["generate", "--prompt", "red potion", "--seed", "9", "--batch", "2", "--steps", "1", "--width", "32",
                 "--height", "32", "--out", str(out), "-q"]) == 0  # -q after the sub-command too
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / "sf-09.png"), str(out / "sf-10.png")]
    assert sorted(printed) == printed
    from PIL import Image

    assert json.loads(Image.open(out / "sf-09.png").text["spriteforge"])["seed"] == 9


# --------------------------------------------------------------------------- one naming style, output tooltips
def test_every_node_has_the_brand_style_and_output_tooltips():
    from spriteforge.nodes import all_nodes

    ids = set()
    for cls in all_nodes(strict=True):
        s = cls.define_schema()
        ids.add(s.node_id)
        assert s.node_id.startswith("SpriteForge")
        assert s.display_name.startswith("SpriteForge ") and "(SpriteForge" not in s.display_name, s.display_name
        for o in s.outputs:
            assert o.tooltip, f"{s.node_id} output {o.display_name} has no tooltip"
    # node ids did not change: every SpriteForge node the shipped workflows use still exists
    used = {n["class_type"] for p in (WF / "api").glob("*.json") for n in json.loads(p.read_text()).values()}
    assert {u for u in used if u.startswith("SpriteForge")} <= ids


# --------------------------------------------------------------------------- img2img: input folder and size check
@pytest.fixture()
def sd35_root(tmp_path):
    pytest.importorskip("torch")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        import tiny_models as tm
    finally:
        sys.path.pop(0)
    root = tmp_path / "models"
    ck = tm.make_sd3(root / "checkpoints", layout="checkpoint", variant="sd3.5-medium")  # position table: 256 px
    ck.rename(root / "checkpoints" / "sd3.5_medium.safetensors")
    tm.make_clip(root / "text_encoders", kind="clip_l")
    tm.make_clip(root / "text_encoders", kind="clip_g")
    tm.make_t5(root / "text_encoders").rename(root / "text_encoders" / "t5xxl_fp16.safetensors")
    return root


def test_run_finds_the_workflows_own_input_folder(tmp_path, monkeypatch):
    from spriteforge.cli.run import shipped_input_dir

    monkeypatch.chdir(tmp_path)  # no ./input here
    assert Path(shipped_input_dir(str(WF / "api" / "img2img.json"))) == WF / "input"
    assert Path(shipped_input_dir(str(WF / "inpainting.json"))) == WF / "input"
    assert shipped_input_dir(str(WF / "api" / "txt2img.json")) is None  # loads no image
    (tmp_path / "input").mkdir()
    assert shipped_input_dir(str(WF / "api" / "img2img.json")) is not None  # ./input lacks the image
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "input" / "spriteforge_knight.png")
    assert shipped_input_dir(str(WF / "api" / "img2img.json")) is None  # ./input has it: the default wins


def test_img2img_size_the_model_cannot_draw_is_reported_at_validation(sd35_root, tmp_path, monkeypatch, capsys):
    from spriteforge.cli.main import main

    monkeypatch.chdir(tmp_path)
    for extra in (["--check"], ["--out", str(tmp_path / "out")]):
        rc = main(["run", str(WF / "api" / "img2img.json"), "--models", str(sd35_root), *extra])
        err = capsys.readouterr().err
        assert rc != 0 and err.startswith("DIMENSION_LIMIT: node 4 (SpriteForgeVAEEncode)"), err
        assert "1024x1024" in err and "at most 256 pixels" in err  # found example_workflows/input without --input
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.png"))
    # a size the model can draw passes the check
    from PIL import Image

    (tmp_path / "small").mkdir()
    Image.new("RGB", (128, 128), (90, 120, 200)).save(tmp_path / "small" / "spriteforge_knight.png")
    rc = main(["run", str(WF / "api" / "img2img.json"), "--models", str(sd35_root), "--input", str(tmp_path / "small"),
               "--check"])
    assert rc == 0, capsys.readouterr().err


def test_run_says_a_core_node_workflow_needs_comfyui(capsys):
    from spriteforge.cli.main import main

    for wf in (WF / "api" / "sdxl_pixel_art.json", WF / "sdxl_pixel_art.json"):
        assert main(["run", str(wf), "--check"]) != 0
        err = capsys.readouterr().err
        assert err.startswith("BAD_INPUT: this workflow uses ComfyUI's core nodes") and "CheckpointLoaderSimple" in err
        assert "spriteforge submit" in err
