import inspect

import pytest
import torch
from transformers import AutoConfig

import vitlm  # noqa: F401  (registers the Auto classes)
from vitlm import VitlmViTMAEConfig
from vitlm.presets import preset_path

TINY_PRESETS = {
    "vit": "vit-tiny-test",
    "vit_mae": "vit-tiny-test",
    "hybrid": "hybrid-tiny-test",
    "dual": "clip-tiny-test",
    "pit": "pit-tiny-test",
    "swin": "swin-tiny-test",
    "dinov2": "dinov2-tiny-test",  # the ViT with layer scale, registers, SwiGLU and [CLS] + mean pooling
    "beit": "beit-tiny-test",  # the ViT with a relative position bias per block, no key bias, mean pooling + norm
    "vit_synthesis": "synthesis-tiny-test",  # the ViT with the synthesis inpainting head's fields
    "segmenter": "segmenter-tiny-test",  # Segmenter's mask transformer over the tiny ViT
}


@pytest.fixture(scope="session", autouse=True)
def gradio_cache(tmp_path_factory):
    """Apps built in the test process write their output images to this session's folder, not /tmp/gradio."""
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("gradio")
        patch.setenv("GRADIO_TEMP_DIR", str(folder))
        yield folder


def tiny_config(family: str, **overrides):
    """The family's tiny preset from hub_configs/, with `overrides` applied (validated like any config). "vit_mae" is
    the tiny ViT as the encoder of an MAE config (the masked-image-modeling head's fields go in `overrides`)."""
    config = AutoConfig.from_pretrained(preset_path(TINY_PRESETS[family]))
    values = config.to_dict()
    if "num_labels" in overrides:  # a new label count replaces the preset's label names
        values = {k: v for k, v in values.items() if k not in ("id2label", "label2id")}
    values.update(overrides)
    config_class = VitlmViTMAEConfig if family == "vit_mae" else type(config)
    return config_class(**{k: v for k, v in values.items() if k != "model_type"})


def tiny_clip_config(**overrides):
    """The tiny dual encoder with CLIP's real vocabulary and context, for tests that tokenize text."""
    text = tiny_config("dual").text_config.to_dict()
    text.update(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407)
    return tiny_config("dual", text_config=text, **overrides)


def pixel_batch(config, batch_size=2, height=None, width=None, seed=0):
    vision = getattr(config, "vision_config", config)
    size = vision.image_size if isinstance(vision.image_size, int) else vision.image_size[0]
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, vision.num_channels, height or size, width or size, generator=generator)


def text_batch(config, batch_size=2, length=8, seed=0):
    """Random token ids ending in end-of-text then padding, as CLIP's tokenizer lays them out."""
    text = config.text_config
    generator = torch.Generator().manual_seed(seed)
    low = min(1, text.vocab_size - 3)
    ids = torch.randint(low, text.vocab_size - 2, (batch_size, length), generator=generator)
    ids[ids == text.eos_token_id] = low
    for row in range(batch_size):
        end = length - 1 - row % 3
        ids[row, end] = text.eos_token_id
        ids[row, end + 1 :] = text.pad_token_id
    attention_mask = (torch.arange(length)[None] <= (ids == text.eos_token_id).int().argmax(1)[:, None]).long()
    return ids, attention_mask


def model_inputs(model, batch_size=2, seed=0):
    """A forward-ready batch for any vitlm model."""
    config = model.config
    if "noise" in inspect.signature(model.forward).parameters:  # masked image modeling: a fixed random mask
        grid = config.grid_size
        noise = torch.rand(batch_size, grid[0] * grid[1], generator=torch.Generator().manual_seed(seed))
        return {"pixel_values": pixel_batch(config, batch_size, seed=seed), "noise": noise}
    if hasattr(config, "text_config"):
        input_ids, attention_mask = text_batch(config, batch_size, seed=seed)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "pixel_values": pixel_batch(config, batch_size, seed=seed),
        }
    return {"pixel_values": pixel_batch(config, batch_size, seed=seed)}


def main_output(outputs):
    """The tensor that best summarizes a model's output, for equality checks."""
    for name in ("logits", "logits_per_image", "last_hidden_state"):
        if getattr(outputs, name, None) is not None:
            return getattr(outputs, name)
    raise AssertionError(f"no known output in {type(outputs).__name__}")
