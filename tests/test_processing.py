"""The dual encoder's processor: saving and reloading give back the same processor, and the inputs CLIPProcessor
takes."""

import json

import numpy as np
import torch
from PIL import Image

from vitlm import VitlmDualEncoderProcessor, VitlmImageProcessor
from vitlm.clip_bpe import clip_tokenizer


def test_save_and_load_round_trip(tmp_path):
    processor = VitlmDualEncoderProcessor(VitlmImageProcessor(size=40, crop_size=32), clip_tokenizer())
    before = processor.to_json_string()
    processor.save_pretrained(tmp_path)
    # the saved files still name the remote code, for `trust_remote_code=True` without vitlm
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["auto_map"]["AutoProcessor"] == "processing_vitlm.VitlmDualEncoderProcessor"
    assert saved["image_processor"]["auto_map"]["AutoImageProcessor"] == "image_processing_vitlm.VitlmImageProcessor"
    loaded = VitlmDualEncoderProcessor.from_pretrained(tmp_path)
    # `auto_map` used to stay on the saved processor and come back in its `to_dict()`
    assert processor.to_json_string() == before
    assert loaded.to_dict() == processor.to_dict() and "auto_map" not in loaded.to_dict()


def test_one_list_of_images_per_sample():
    processor = VitlmDualEncoderProcessor(VitlmImageProcessor(size=40, crop_size=32), clip_tokenizer())
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(40, 56), (64, 33)]]
    texts = ["a red circle", "a blue square"]
    nested = processor(images=[[images[0]], [images[1]]], text=texts, padding=True, return_tensors="pt")
    flat = processor(images=images, text=texts, padding=True, return_tensors="pt")
    assert torch.equal(nested["pixel_values"], flat["pixel_values"]) and nested["pixel_values"].shape[0] == 2
    assert torch.equal(nested["input_ids"], flat["input_ids"])
