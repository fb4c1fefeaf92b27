"""The LoRA nodes: schema rules, applying and stacking through the nodes, engines without LoRA support."""

from __future__ import annotations

import pytest
import torch

from spriteforge import paths
from spriteforge.errors import LORA_UNSUPPORTED_ENGINE, SpriteForgeError
from spriteforge.nodes.lora import NODES, ApplyLoRA, LoRAInfo, LoRAStack
from spriteforge.tests import test_lora_util as U


@pytest.fixture
def loras(tmp_path):
    root = tmp_path / "models"
    (root / "loras" / "sub").mkdir(parents=True)
    h = U.handle("pixart")
    shapes = {n: tuple(m.weight.shape) for n, m in h.transformer.named_modules() if isinstance(m, torch.nn.Linear)}
    writers = {}
    for i, (name, layer, fmt) in enumerate([("a.safetensors", "transformer_blocks.0.attn1.to_q", "kohya"),
                                            ("sub/b.safetensors", "transformer_blocks.1.attn2.to_k", "diffusers")]):
        w = U.Writer(i)
        key = w.lora(fmt, layer, shapes[layer], rank=4, alpha=2.0)
        w.save(root / "loras" / name)
        writers[name] = (w, key, layer)
    paths.set_models_root(root)
    yield h, writers
    paths.set_models_root(None)


def test_schemas():
    for cls in NODES:
        s = cls.define_schema()
        assert s.node_id.startswith("SpriteForge") and s.category == "SpriteForge/lora" and s.description
        for inp in s.inputs:
            assert inp.tooltip, f"{s.node_id}.{inp.id} has no tooltip"


def test_apply_chain_and_branches(loras):
    h, writers = loras
    base_sd = U.state(h.transformer)
    assert "a.safetensors" in ApplyLoRA.define_schema().inputs[1].options
    a = ApplyLoRA.execute(model=h, lora_name="a.safetensors", strength_model=0.5, strength_text=1.0)
    ab = ApplyLoRA.execute(model=a[0], lora_name="sub/b.safetensors", strength_model=1.0, strength_text=1.0)
    b = ApplyLoRA.execute(model=h, lora_name="sub/b.safetensors", strength_model=1.0, strength_text=1.0)
    assert "1 LoRA layers applied" in a[1]
    assert [r.name for r in ab[0].loras] == ["a.safetensors", "sub/b.safetensors"]
    assert h.loras == () and [r.name for r in a[0].loras] == ["a.safetensors"]
    wa, ka, la = writers["a.safetensors"]
    wb, kb, lb = writers["sub/b.safetensors"]
    Wa = base_sd[la + ".weight"].double().numpy()
    Wb = base_sd[lb + ".weight"].double().numpy()
    U.check_weights(base_sd, a[0].transformer, {la + ".weight": Wa + 0.5 * wa.delta[ka]})
    U.check_weights(base_sd, b[0].transformer, {lb + ".weight": Wb + wb.delta[kb]})
    U.check_weights(base_sd, ab[0].transformer, {la + ".weight": Wa + 0.5 * wa.delta[ka], lb + ".weight": Wb + wb.delta[kb]})
    stacked = LoRAStack.execute(model=h, lora_1="a.safetensors", strength_model_1=0.5, strength_text_1=1.0,
                                lora_2="(none)", lora_3="sub/b.safetensors", strength_model_3=1.0, strength_text_3=0.0)
    U.check_weights(base_sd, stacked[0].transformer, {la + ".weight": Wa + 0.5 * wa.delta[ka], lb + ".weight": Wb + wb.delta[kb]})
    torch.testing.assert_close(U.run("pixart", stacked[0].transformer), U.run("pixart", ab[0].transformer))
    for k, v in h.transformer.state_dict().items():
        assert torch.equal(v, base_sd[k])


def test_engine_without_lora_refuses(loras):
    import dataclasses

    h = dataclasses.replace(U.handle("pixart"), engine=U.engine_without_lora())
    with pytest.raises(SpriteForgeError) as ei:
        ApplyLoRA.execute(model=h, lora_name="a.safetensors", strength_model=1.0, strength_text=1.0)
    assert ei.value.code == LORA_UNSUPPORTED_ENGINE


def test_info_node(loras):
    out = LoRAInfo.execute(lora_name="a.safetensors")
    text = out[0]
    assert "LoRA for pixart or sana or dit" in text and "format kohya" in text and "rank 4" in text
    assert "transformer_blocks: 0" in text
    assert out.ui == {"text": [text]}


def test_missing_lora_is_model_not_found(loras):
    h, _ = loras
    with pytest.raises(SpriteForgeError) as ei:
        ApplyLoRA.execute(model=h, lora_name="nope.safetensors", strength_model=1.0, strength_text=1.0)
    assert ei.value.code == "MODEL_NOT_FOUND"
