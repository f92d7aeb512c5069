"""LoRA through peft: a LoRA run's checkpoint holds a peft adapter, which peft's own loader reads back."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from crispedit.mgt.checkpoint import latest_checkpoint
from crispedit.mgt.components import build_transformer_from_config, load_trained_transformer
from crispedit.mgt.train import Trainer


def test_a_lora_checkpoint_is_a_peft_adapter_that_peft_loads(tiny_config, pairs_dir, tmp_path):
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from peft.tuners.lora import LoraLayer

    cfg = tiny_config
    cfg.train.lora_rank, cfg.train.lora_alpha, cfg.train.learning_rate = 2, 4.0, 1e-2
    cfg.train.checkpoint_every = 10_000
    trainer = Trainer(cfg, [pairs_dir], tmp_path / "run")
    trainable = {n for n, p in trainer.unwrapped.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)  # only the adapters train
    trainer.train(max_steps=2)
    checkpoint = latest_checkpoint(tmp_path / "run")
    adapter = checkpoint / "adapter"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()

    # peft's own loader, onto a plain transformer holding the run's base weights
    state = load_file(str(checkpoint / "model.safetensors"))
    base = {k.replace(".base_layer.", "."): v for k, v in state.items() if ".lora_" not in k}
    loaded = build_transformer_from_config(cfg.model, init=None)
    loaded.load_state_dict(base, strict=True)
    config = LoraConfig.from_pretrained(str(adapter))
    assert (config.r, config.lora_alpha, set(config.target_modules)) == (2, 4.0, set(cfg.train.lora_targets))
    inject_adapter_in_model(config, loaded)
    result = set_peft_model_state_dict(loaded, load_file(str(adapter / "adapter_model.safetensors")))
    assert not [k for k in result.unexpected_keys if "lora_" in k]
    trained = {n: p for n, p in trainer.unwrapped.named_parameters() if p.requires_grad}
    for name, tensor in loaded.named_parameters():
        if name in trained:
            assert torch.equal(tensor, trained[name].detach().cpu()), name
    assert any(float(p.detach().abs().sum()) > 0 for n, p in trained.items() if ".lora_B." in n)  # the run moved B off zero

    # merged by peft's layers, it is the transformer edit and eval load (plain parameter names, update folded in)
    for name, module in list(loaded.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(loaded.get_submodule(parent) if parent else loaded, child, module.get_base_layer())
    ours = load_trained_transformer(checkpoint, cfg.model, (2, 4.0, tuple(cfg.train.lora_targets)), use_ema=False)
    theirs = loaded.state_dict()
    assert set(ours.state_dict()) == set(theirs) == set(base)
    changed = 0
    for key, value in ours.state_dict().items():
        assert torch.allclose(value, theirs[key], atol=1e-6), key
        changed += int(not torch.equal(value, base[key]))
    assert changed  # the update is in the merged weights
