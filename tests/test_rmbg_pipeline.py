"""Background removal end to end with a tiny BiRefNet: chunking, aspect, bad inputs, nodes, CLI."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402

from spriteforge import paths, rmbg  # noqa: E402
from spriteforge.engines.torch_models import birefnet as bn  # noqa: E402
from spriteforge.errors import BAD_INPUT, CODES, MODEL_NOT_FOUND, SpriteForgeError  # noqa: E402
from spriteforge.progress import Interrupted, clear_interrupt, request_interrupt  # noqa: E402

TINY = bn.BiRefNetConfig(
    embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), window_size=4,
    dec_inter=8, aspp_inter=8, ipt_inter=8, gdt_channels=4,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    m = bn.BiRefNet(TINY).eval()
    d = tmp_path_factory.mktemp("models") / "birefnet"
    d.mkdir()
    p = d / "BiRefNet_lite.safetensors"  # name says lite; the tiny backbone makes it 'custom' anyway
    save_file({k: v.half().contiguous() if v.is_floating_point() else v for k, v in m.state_dict().items()}, str(p))
    return p


@pytest.fixture(scope="module")
def handle(model_file):
    return bn.load_birefnet(model_file, device="cpu", use_comfy=False)


def _images(b, h, w, seed=0):
    return np.random.default_rng(seed).random((b, h, w, 3)).astype(np.float32)


def test_chunked_batch_equals_one_by_one(handle):
    imgs = _images(5, 40, 70)
    one = rmbg.remove_background(imgs, handle.predict, resolution=96, chunk_size=1)
    chunked = rmbg.remove_background(imgs, handle.predict, resolution=96, chunk_size=3)
    assert one.chunks == [1] * 5 and chunked.chunks == [3, 2]
    assert np.abs(one.alpha - chunked.alpha).max() < 1e-5
    # The foreground solve amplifies the ~1e-6 float noise of the batched GEMMs a little (it is a
    # deterministic function of image and alpha); premultiplied, the colours agree to 2e-3.
    pre = lambda r: r.foreground * r.alpha[..., None]  # noqa: E731
    assert np.abs(pre(one) - pre(chunked)).max() < 2e-3
    assert one.alpha.shape == (5, 40, 70) and one.composite.shape == (5, 40, 70, 4)
    assert one.alpha.min() >= 0 and one.alpha.max() <= 1


def test_out_of_memory_chunk_is_split(handle):
    calls = []

    def predict(batch, size):
        calls.append(len(batch))
        if len(batch) > 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return handle.predict(batch, size)

    freed = []
    r = rmbg.remove_background(_images(4, 32, 32), predict, resolution=64, chunk_size=4, on_oom=lambda: freed.append(1))
    assert r.chunks == [1, 1, 1, 1] and calls[:2] == [4, 2] and freed


def test_aspect_ratio_kept_through_the_model_path(handle):
    """A predictor that 'segments' bright pixels: the mask must land exactly on the disk, unstretched."""
    h, w = 60, 200
    yy, xx = np.mgrid[0:h, 0:w]
    disk = (np.hypot(yy - 30, xx - 150) < 20).astype(np.float32)
    img = np.repeat(disk[None, ..., None], 3, axis=-1) * 0.9 + 0.05

    class Bright(torch.nn.Module):
        def forward(self, x):  # x is ImageNet-normalised; undo it and threshold the red channel
            red = x[:, :1] * bn.IMAGENET_STD[0] + bn.IMAGENET_MEAN[0]
            return (red - 0.5) * 40

    h2 = bn.BiRefNetHandle(model=Bright(), config=TINY, variant="custom", resolution=(1024, 1024),
                           device=torch.device("cpu"), dtype=torch.float32)
    h2.model.register_parameter("dummy", torch.nn.Parameter(torch.zeros(1)))
    for res in (256, 512, (2560, 1440)):
        r = rmbg.remove_background(img, h2.predict, resolution=res, foreground="none")
        m = r.alpha[0] > 0.5
        iou = (m & (disk > 0)).sum() / (m | (disk > 0)).sum()
        assert iou > 0.95, (res, iou)
        cy, cx = np.argwhere(m).mean(axis=0)
        assert abs(cy - 30) < 0.6 and abs(cx - 150) < 0.6


def test_inputs_gray_rgba_and_bad_ones(handle):
    rgb = _images(1, 32, 48)
    gray = rgb[..., :1]
    g = rmbg.remove_background(gray, handle.predict, resolution=64)
    ref = rmbg.remove_background(np.repeat(gray, 3, axis=-1), handle.predict, resolution=64)
    assert g.foreground.shape == (1, 32, 48, 3) and np.allclose(g.alpha, ref.alpha, atol=1e-6)
    assert rmbg.remove_background(gray[0, ..., 0], handle.predict, resolution=64).alpha.shape == (1, 32, 48)
    rgba = np.concatenate([rgb, np.ones((1, 32, 48, 1), np.float32)], axis=-1)
    rgba[0, :, :10, 3] = 0  # already transparent on the left
    r = rmbg.remove_background(rgba, handle.predict, resolution=64)
    plain = rmbg.remove_background(rgb, handle.predict, resolution=64)
    assert r.alpha[0, :, :10].max() == 0
    assert np.allclose(r.alpha[0, :, 10:], plain.alpha[0, :, 10:], atol=1e-6)
    u8 = (rgb * 255).astype(np.uint8)
    assert rmbg.remove_background(u8, handle.predict, resolution=64).alpha.shape == (1, 32, 48)

    def code(x, **kw):
        with pytest.raises(SpriteForgeError) as e:
            rmbg.remove_background(x, handle.predict, **kw)
        return e.value.code

    assert code(np.zeros((1, 1, 1, 3), np.float32)) == BAD_INPUT  # 1x1
    assert code(np.zeros((2, 1, 1, 3), np.float32)) == BAD_INPUT
    assert code(np.zeros((1, 32, 32, 5), np.float32)) == BAD_INPUT  # 5 channels
    assert code(np.zeros((0, 32, 32, 3), np.float32)) == BAD_INPUT  # empty batch
    assert code(np.zeros((2, 32, 32), np.float32)) == BAD_INPUT  # a MASK, not an IMAGE
    assert code(np.full((1, 32, 32, 3), np.nan, np.float32)) == BAD_INPUT
    assert code(rgb, foreground="magic") == BAD_INPUT
    assert code(rgb, composite="color", color="nope") == BAD_INPUT
    assert code(rgb, resolution=100) == BAD_INPUT


def test_interrupt_between_chunks(handle):
    request_interrupt()
    try:
        with pytest.raises(Interrupted):
            rmbg.remove_background(_images(3, 32, 32), handle.predict, resolution=64)
    finally:
        clear_interrupt()


# ----------------------------------------------------------------------------- nodes


@pytest.fixture()
def models_root(model_file):
    paths.set_models_root(model_file.parent.parent)
    yield model_file.parent.parent
    paths.set_models_root(None)


def test_node_schemas():
    from spriteforge.nodes import rmbg as nodes

    ids = []
    for cls in nodes.NODES:
        s = cls.define_schema()
        ids.append(s.node_id)
        assert s.category == "SpriteForge/background" and s.description
        for inp in s.inputs:
            assert inp.tooltip, (s.node_id, inp.id)
        for out in s.outputs:
            assert out.tooltip
    assert ids == ["SpriteForgeLoadBiRefNet", "SpriteForgeRemoveBackground"]
    assert nodes._variants() == ["auto", *bn.VARIANTS]


def test_nodes_end_to_end(models_root):
    from spriteforge.nodes import rmbg as nodes

    schema = nodes.LoadBiRefNet.define_schema()
    assert schema.inputs[0].options == ["BiRefNet_lite.safetensors"]
    h = nodes.LoadBiRefNet.execute("BiRefNet_lite.safetensors", "auto", "auto", "auto")[0]
    assert h.dtype == torch.float32 and h.device.type == "cpu"
    img = torch.rand(3, 40, 56, 3)
    fg, mask, comp = nodes.RemoveBackground.execute(h, img, resolution=64, batch_chunk=0).args
    assert fg.shape == (3, 40, 56, 3) and mask.shape == (3, 40, 56) and comp.shape == (3, 40, 56, 4)
    assert fg.dtype == mask.dtype == comp.dtype == torch.float32
    assert torch.equal(comp[..., 3], mask)
    _, mask2, comp2 = nodes.RemoveBackground.execute(
        h, img, resolution=64, batch_chunk=2, threshold=0.5, grow=1, feather=1.0, remove_islands=4, fill_holes=16,
        foreground="blur_fusion", composite="color", color="#ff00ff",
    ).args
    assert comp2.shape == (3, 40, 56, 3) and mask2.shape == (3, 40, 56)
    for bad in (torch.rand(2, 40, 56), torch.rand(1, 1, 1, 3)):
        with pytest.raises(SpriteForgeError) as e:
            nodes.RemoveBackground.execute(h, bad, resolution=64)
        assert e.value.code == BAD_INPUT


def test_loader_missing_file_names_folder_and_expected_files(models_root):
    from spriteforge.nodes import rmbg as nodes

    with pytest.raises(SpriteForgeError) as e:
        nodes.LoadBiRefNet.execute("BiRefNet_HR.safetensors", "auto", "auto", "auto")
    assert e.value.code == MODEL_NOT_FOUND
    assert str(models_root / "birefnet") in e.value.message and "model.safetensors" in e.value.message


# ----------------------------------------------------------------------------- command line


def test_cli_rmbg(model_file, tmp_path):
    from PIL import Image

    from spriteforge.cli.main import main

    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((30, 45, 3)) * 255).astype(np.uint8)).save(src / "a.png")
    Image.fromarray((rng.random((50, 20)) * 255).astype(np.uint8), mode="L").save(src / "b.jpg")
    Image.fromarray((rng.random((33, 33, 4)) * 255).astype(np.uint8), mode="RGBA").save(src / "c.webp")
    out = tmp_path / "out"
    assert main(["-q", "rmbg", str(src), "--model", str(model_file), "--out", str(out), "--resolution", "64"]) == 0
    for name, size in (("a.png", (45, 30)), ("b.png", (20, 50)), ("c.png", (33, 33))):
        im = Image.open(out / name)
        assert im.mode == "RGBA" and im.size == size
    out2 = tmp_path / "masks"
    assert main(["-q", "rmbg", str(src / "a.png"), "--model", str(model_file), "--out", str(out2), "--mask-only",
                 "--resolution", "64", "--threshold", "0.5"]) == 0
    m = np.asarray(Image.open(out2 / "a.png"))
    assert m.shape == (30, 45) and set(np.unique(m)) <= {0, 255}
    out3 = tmp_path / "white"
    assert main(["-q", "rmbg", str(src / "a.png"), "--model", str(model_file), "--out", str(out3),
                 "--resolution", "64", "--background", "#ffffff"]) == 0
    assert Image.open(out3 / "a.png").mode == "RGB"


def test_cli_errors(model_file, tmp_path, capsys):
    from PIL import Image

    from spriteforge.cli.main import main

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(src / "dot.png")  # 1x1
    (src / "broken.png").write_bytes(b"not a png")
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(src / "ok.png")
    out = tmp_path / "out"
    rc = main(["-q", "rmbg", str(src), "--model", str(model_file), "--out", str(out), "--resolution", "64"])
    assert rc == CODES[BAD_INPUT]
    assert (out / "ok.png").exists() and not (out / "dot.png").exists()
    err = capsys.readouterr().err
    assert "BAD_INPUT" in err and "2 of 3" in err
    rc = main(["-q", "rmbg", str(src / "ok.png"), "--model", str(tmp_path / "nope.safetensors"), "--out", str(out)])
    assert rc == CODES[MODEL_NOT_FOUND]
    (tmp_path / "bad.safetensors").write_bytes(b"garbage" * 10)
    rc = main(["-q", "rmbg", str(src / "ok.png"), "--model", str(tmp_path / "bad.safetensors"), "--out", str(out)])
    assert rc == CODES[BAD_INPUT]
    rc = main(["-q", "rmbg", str(tmp_path / "missing_dir"), "--model", str(model_file), "--out", str(out)])
    assert rc == CODES[BAD_INPUT]
