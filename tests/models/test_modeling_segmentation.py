"""Segmentation heads: Segmenter's decoders and sub-patch split, the open-vocabulary head's agreement with the
detector's class head, the loss, post-processing to the original pixels and the image-segmentation pipeline."""

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import AutoImageProcessor, pipeline

from tests.conftest import pixel_batch, text_batch, tiny_config
from vitlm import (
    VitlmDualEncoderForSemanticSegmentation,
    VitlmImageProcessor,
    VitlmSegmenterConfig,
    VitlmViTForSemanticSegmentation,
)
from vitlm.models.modeling_segmentation import IGNORE_INDEX, VitlmSubPatchSplit, semantic_segmentation_loss
from vitlm.presets import preset_path


def segmenter(seed=0, **overrides):
    torch.manual_seed(seed)
    return VitlmViTForSemanticSegmentation(tiny_config("segmenter", **overrides)).eval()


def test_the_linear_decoder_is_a_linear_map_of_each_patch_token():
    model = segmenter(decoder_type="linear")
    pixel_values = pixel_batch(model.config)
    with torch.no_grad():
        patches = model.vit(pixel_values).last_hidden_state[:, 1:]  # without [CLS]
        expected = model.decoder(patches).transpose(1, 2).reshape(2, 4, 4, 4)
        torch.testing.assert_close(model(pixel_values).logits, expected)


def test_the_mask_transformer_treats_the_classes_alike():
    """Permuting the class embeddings (and their per-class scale and bias) permutes the logits' channels: every class
    goes through the same blocks, and no class is told apart by its position."""
    model = segmenter()
    pixel_values = pixel_batch(model.config)
    decoder = model.decoder
    with torch.no_grad():
        decoder.mask_scale.copy_(torch.tensor([5.0, 9.0, 13.0, 17.0]))
        decoder.mask_bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
        before = model(pixel_values).logits
        order = torch.tensor([2, 0, 3, 1])
        for parameter in (decoder.mask_scale, decoder.mask_bias):
            parameter.copy_(parameter[order])
        decoder.class_embeddings.copy_(decoder.class_embeddings[:, order])
        torch.testing.assert_close(model(pixel_values).logits, before[:, order], atol=1e-5, rtol=1e-5)


def test_the_sub_patch_split_starts_as_a_copy_of_each_token_and_keeps_the_layout():
    split = VitlmSubPatchSplit(width=3, factor=2)
    from vitlm.models.modeling_segmentation import init_subpatch_split

    init_subpatch_split(split)
    grid = torch.randn(1, 2, 3, 3)
    with torch.no_grad():
        out = split(grid)
        assert out.shape == (1, 4, 6, 3)
        for row in range(2):
            for col in range(3):
                assert torch.equal(
                    out[0, 2 * row : 2 * row + 2, 2 * col : 2 * col + 2], grid[0, row, col].expand(2, 2, 3)
                )
        split.weight.copy_(torch.randn_like(split.weight))  # sub-token (1, 0) of a token is its third slice
        assert torch.allclose(split(grid)[0, 1, 0], grid[0, 0, 0] @ split.weight[6:9].T + split.bias[6:9], atol=1e-6)
    model = segmenter(subpatch_factor=2)
    assert model(pixel_batch(model.config)).logits.shape == (2, 4, 8, 8)


@pytest.mark.parametrize("family", ["hybrid", "pit", "swin"])
def test_hierarchical_and_hybrid_towers_segment_on_their_last_grid(family):
    config = tiny_config("segmenter", vision_config=tiny_config(family).to_dict())
    model = VitlmViTForSemanticSegmentation(config).eval()
    vision = config.vision_config
    logits = model(pixel_batch(config)).logits
    assert logits.shape == (2, 4, *vision.output_grid(vision.image_size, vision.image_size))


def test_the_model_runs_at_another_resolution():
    model = segmenter()
    pixel_values = pixel_batch(model.config, height=48, width=40)
    with pytest.raises(ValueError):
        model(pixel_values)  # a learned position table of another grid, not resized unasked
    assert model(pixel_values, interpolate_pos_encoding=True).logits.shape == (2, 4, 6, 5)


def test_the_loss_is_the_cross_entropy_of_the_upsampled_logits_ignoring_255():
    logits = torch.randn(2, 3, 4, 4)
    labels = torch.randint(0, 3, (2, 16, 16))
    labels[0, :5] = IGNORE_INDEX
    upsampled = torch.nn.functional.interpolate(logits, size=(16, 16), mode="bilinear", align_corners=False)
    keep = labels != IGNORE_INDEX
    expected = torch.nn.functional.cross_entropy(upsampled.permute(0, 2, 3, 1)[keep], labels[keep])
    torch.testing.assert_close(semantic_segmentation_loss(logits, labels), expected)
    with pytest.raises(ValueError, match="class 3, outside 0 .. 2"):
        semantic_segmentation_loss(logits, torch.full((2, 16, 16), 3))
    with pytest.raises(ValueError, match=r"\(batch, height, width\)"):
        semantic_segmentation_loss(logits, labels[0])


def test_the_config_refuses_what_no_segmenter_is():
    vision = tiny_config("vit").to_dict()
    with pytest.raises(ValueError, match="decoder_type"):
        VitlmSegmenterConfig(vision_config=vision, decoder_type="upernet")
    with pytest.raises(ValueError, match="mask_decoder_heads"):
        VitlmSegmenterConfig(vision_config=vision, mask_decoder_heads=5)
    with pytest.raises(ValueError, match="num_labels"):
        VitlmSegmenterConfig(vision_config=vision, num_labels=0)
    with pytest.raises(ValueError, match="vision_config"):
        VitlmSegmenterConfig(vision_config={"model_type": "vitlm_text"})


def test_the_open_vocabulary_head_starts_from_the_dual_encoders_own_similarities():
    """Before fine-tuning, each cell's class embedding is its token projected as the image embedding is (MaskCLIP): a
    mean-pooled tower's image embedding is the mean of these. Query logits are the dual encoder's image-text logits
    (temperature times cosine), shifted and scaled by the detector's class head; the background channel is 0."""
    config = tiny_config("dual", vision_config={**tiny_config("dual").vision_config.to_dict(), "pooling": "mean"})
    torch.manual_seed(0)
    model = VitlmDualEncoderForSemanticSegmentation(config).eval()
    pixel_values = pixel_batch(config)
    input_ids, attention_mask = text_batch(config, batch_size=6)  # 3 queries per image
    with torch.no_grad():
        outputs = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
        tokens = model.dual_encoder.vision_model(pixel_values).last_hidden_state[:, 1:]  # after [CLS]
        projected = model.dual_encoder.visual_projection(tokens)
        image_embeds = model.dual_encoder.get_image_features(pixel_values=pixel_values).pooler_output
        torch.testing.assert_close(projected.mean(1), image_embeds)
        texts = model.dual_encoder.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        cosine = torch.nn.functional.normalize(projected, dim=-1) @ torch.nn.functional.normalize(texts, dim=-1).T
        cosine = torch.stack([cosine[0, :, :3], cosine[1, :, 3:]])  # each image's own queries
        features = model.subpatch_split(model.image_features(pixel_values)[0])[:, ::2, ::2].flatten(1, 2)
        head = model.class_head
        similarity = cosine * model.dual_encoder.logit_scale.exp()
        expected = (similarity + head.logit_shift(features)) * (
            torch.nn.functional.elu(head.logit_scale(features)) + 1
        )
    logits = outputs.logits
    assert logits.shape == (2, 4, 8, 8) and torch.equal(logits[:, 0], torch.zeros(2, 8, 8))
    torch.testing.assert_close(logits[:, 1:, ::2, ::2], expected.transpose(1, 2).reshape(2, 3, 4, 4))
    with pytest.raises(ValueError, match="queries"):
        model(pixel_values=pixel_values)


def test_the_open_vocabulary_head_needs_a_token_wide_image_embedding():
    vision = {**tiny_config("dual").vision_config.to_dict(), "pooling": "cls", "representation_size": 16}
    with pytest.raises(ValueError, match="pooled output"):
        VitlmDualEncoderForSemanticSegmentation(tiny_config("dual", vision_config=vision))


def test_the_open_vocabulary_head_fine_tunes_on_label_maps():
    config = tiny_config("dual")
    torch.manual_seed(0)
    model = VitlmDualEncoderForSemanticSegmentation(config).train()
    pixel_values = pixel_batch(config)
    input_ids, attention_mask = text_batch(config, batch_size=4)  # 2 queries per image
    labels = torch.zeros(2, 32, 32, dtype=torch.long)
    labels[:, :, :12], labels[:, :, 20:] = 1, 2  # query 0 on the left, query 1 on the right, background between
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < 0.5 * losses[0]


def test_post_processing_resizes_the_logits_to_the_original_image():
    processor = VitlmImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False)
    logits = torch.randn(2, 5, 4, 4)
    maps = processor.post_process_semantic_segmentation({"logits": logits}, target_sizes=[(50, 70), (32, 32)])
    for label_map, size in zip(maps, [(50, 70), (32, 32)]):
        expected = torch.nn.functional.interpolate(
            logits[:1] if size == (50, 70) else logits[1:], size=size, mode="bilinear"
        )
        assert torch.equal(label_map, expected[0].argmax(0))
    assert [tuple(m.shape) for m in processor.post_process_semantic_segmentation({"logits": logits})] == [(4, 4)] * 2
    with pytest.raises(ValueError, match="2 target sizes for 1 images"):
        processor.post_process_semantic_segmentation({"logits": logits[:1]}, target_sizes=[(3, 3), (4, 4)])


def test_post_processing_undoes_a_center_crop():
    """With a resize to shortest edge 32 and a 32 x 32 center crop, a 32 x 64 image loses its left and right
    quarters: mapped back, each original pixel inside the crop takes the prediction at its place, and the pixels
    outside take the nearest edge's."""
    processor = VitlmImageProcessor(size=32, crop_size=32)
    logits = torch.zeros(1, 2, 4, 4)
    logits[0, 1, :, 2:] = 10  # class 1 on the crop's right half
    (label_map,) = processor.post_process_semantic_segmentation({"logits": logits}, target_sizes=[(32, 64)])
    assert label_map.shape == (32, 64)
    assert (label_map[:, :28] == 0).all() and (label_map[:, 36:] == 1).all()


def test_the_pipeline_gives_one_mask_per_class_present_at_the_image_size():
    """Against manual resizing: the processor squashes the whole (non-square) image to the model's 32 x 32, and the
    logits, bilinearly upsampled to the original 50 x 70, give each pixel its class."""
    torch.manual_seed(0)
    model = VitlmViTForSemanticSegmentation(tiny_config("segmenter", subpatch_factor=2)).eval()
    processor = AutoImageProcessor.from_pretrained(preset_path("segmenter-tiny-test"))
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    segment = pipeline("image-segmentation", model=model, image_processor=processor)
    results = segment(image)

    resized = image.resize((32, 32), resample=PIL.Image.BICUBIC)
    pixel_values = (torch.from_numpy(np.asarray(resized)).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        logits = model(pixel_values[None]).logits
    expected = torch.nn.functional.interpolate(logits, size=(50, 70), mode="bilinear")[0].argmax(0).numpy()
    present = np.unique(expected)
    assert len(present) > 1
    assert [result["label"] for result in results] == [model.config.id2label[int(k)] for k in present]
    for result, label in zip(results, present):
        assert result["mask"].size == (70, 50)
        assert (np.asarray(result["mask"]) == 255 * (expected == label)).all()
