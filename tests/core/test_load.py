"""What model.load_model holds: one decoder, read tensor by tensor into an LM built on the meta device (never
transformers' decoder as well), with the towers, config and generation config transformers would give.

    .venv/bin/python -m pytest -q tests/core/test_load.py
"""

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from musicgen_cfg import checkpoint as checkpoint_module
from musicgen_cfg.errors import UserError
from musicgen_cfg.lm import MusicgenLM
from musicgen_cfg.model import load_model


@pytest.fixture()
def one_decoder(monkeypatch):
    """Fails any construction of transformers' MusicGen decoder (alone or in the full model) and of a MusicgenLM
    off the meta device; records the storage of every tensor read from a checkpoint (name -> data_ptr)."""
    from transformers.models.musicgen import modeling_musicgen

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"load_model built transformers' {type(self).__name__}: a second decoder")

    for cls in (modeling_musicgen.MusicgenForCausalLM, modeling_musicgen.MusicgenForConditionalGeneration):
        monkeypatch.setattr(cls, "__init__", refuse)
    built_on = []
    init = MusicgenLM.__init__

    def recording_init(self, *args, **kwargs):
        built_on.append(torch.get_default_device().type)
        init(self, *args, **kwargs)

    monkeypatch.setattr(MusicgenLM, "__init__", recording_init)
    reads = {}
    read = checkpoint_module.read_tensor

    def recording_read(info, label=None):
        tensor = read(info, label)
        reads[info.name] = tensor.untyped_storage().data_ptr()
        return tensor

    monkeypatch.setattr(checkpoint_module, "read_tensor", recording_read)
    return built_on, reads


@pytest.mark.parametrize("spec", ["tiny", "default"])
def test_a_load_holds_one_decoder_made_of_the_tensors_read(spec, tiny_dir, one_decoder):
    built_on, reads = one_decoder
    model = load_model(str(tiny_dir) if spec == "tiny" else spec)
    assert built_on == ["meta"]  # the only MusicgenLM built allocated nothing
    for name, tensor in model.lm.state_dict().items():  # its weights are the tensors read, not copies of them
        assert tensor.device.type == "cpu" and tensor.untyped_storage().data_ptr() == reads[name], name
    assert model.lm.stack.positions.device.type == "cpu"  # the buffer no checkpoint holds is real


def test_a_real_checkpoint_loads_as_transformers_loads_it(tiny_dir, tiny_hf):
    model = load_model(str(tiny_dir))
    reference = tiny_hf.state_dict()
    parts = {"": model.lm, "text_encoder.": model.text_encoder.encoder, "audio_encoder.": model.codec.model}
    for prefix, module in parts.items():
        for name, tensor in module.state_dict().items():
            assert tensor.dtype == torch.float32 and torch.equal(tensor, reference[prefix + name]), prefix + name
    encoder = model.text_encoder.encoder
    assert encoder.shared.weight is encoder.encoder.embed_tokens.weight  # T5's tied embeddings stay tied
    assert model.config == tiny_hf.config.to_dict()  # what write_files saves
    assert model.generation_config.to_dict() == tiny_hf.generation_config.to_dict()
    assert not (model.lm.training or encoder.training or model.codec.model.training)


def test_a_bfloat16_load_casts_each_tensor_as_read(tiny_dir):
    full, half = load_model(str(tiny_dir)), load_model(str(tiny_dir), dtype=torch.bfloat16)
    assert half.lm.dtype == torch.bfloat16 and half.text_encoder.encoder.dtype == torch.float32  # towers stay fp32
    for name, tensor in half.lm.state_dict().items():
        assert torch.equal(tensor, full.lm.state_dict()[name].to(torch.bfloat16)), name
    assert all(p.requires_grad for p in full.lm.parameters())  # trainable, as a freshly built LM


def test_legacy_encodec_weight_norm_names_load_through_transformers(tiny_dir, tmp_path):
    """facebook/musicgen-* store EnCodec's weight norm as weight_g / weight_v: transformers' key conversion applies."""
    legacy = tmp_path / "legacy"
    shutil.copytree(tiny_dir, legacy)
    state = load_file(str(legacy / "model.safetensors"))
    renamed = {name.replace("parametrizations.weight.original0", "weight_g")
               .replace("parametrizations.weight.original1", "weight_v"): tensor for name, tensor in state.items()}
    assert renamed.keys() != state.keys()
    save_file(renamed, str(legacy / "model.safetensors"), metadata={"format": "pt"})
    ours, reference = load_model(str(legacy)).codec.model.state_dict(), load_model(str(tiny_dir)).codec.model.state_dict()
    assert ours.keys() == reference.keys() and all(torch.equal(ours[k], reference[k]) for k in ours)


def test_a_hub_id_that_is_not_cached_offline_is_one_line():  # conftest sets HF_HUB_OFFLINE
    with pytest.raises(UserError, match=r"^cannot load MusicGen checkpoint 'nobody-here/no-such-musicgen': ") as err:
        load_model("nobody-here/no-such-musicgen")
    assert "\n" not in str(err.value)
