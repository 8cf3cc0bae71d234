import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline

from tests.conftest import pixel_batch, tiny_clip_config
from vitlm import VitlmDualEncoderForObjectDetection, VitlmDualEncoderProcessor, VitlmImageProcessor
from vitlm.clip_bpe import clip_tokenizer
from vitlm.models.modeling_detection import box_bias


@pytest.fixture(scope="module")
def tokenizer():
    return clip_tokenizer()


def build():
    torch.manual_seed(0)
    return VitlmDualEncoderForObjectDetection(tiny_clip_config()).eval()


def queries(tokenizer, texts, images=2):
    return tokenizer(texts * images, padding=True, return_tensors="pt")


def test_untrained_boxes_sit_on_their_patches():
    model = build()
    torch.nn.init.zeros_(model.box_head.dense2.weight)
    torch.nn.init.zeros_(model.box_head.dense2.bias)
    boxes = model.predict_boxes(torch.randn(1, 4, 4, model.config.vision_config.hidden_size))[0]
    # token (row 1, column 2) of a 4x4 grid: OWL-ViT's prior is its patch's bottom-right corner, one patch in size
    torch.testing.assert_close(boxes[1 * 4 + 2], torch.tensor([0.75, 0.5, 0.25, 0.25]), atol=1e-3, rtol=0)
    assert box_bias(2, 3).shape == (6, 4)


def test_outputs_and_query_mask(tokenizer):
    model = build()
    inputs = queries(tokenizer, ["a red circle", "a blue square", "nothing"])
    query_mask = torch.tensor([[True, True, False], [True, False, False]])
    outputs = model(pixel_values=pixel_batch(model.config), query_mask=query_mask, **inputs)
    assert outputs.logits.shape == (2, 16, 3) and outputs.pred_boxes.shape == (2, 16, 4)
    assert ((outputs.pred_boxes > 0) & (outputs.pred_boxes < 1)).all()
    assert (outputs.logits[~query_mask[:, None, :].expand(-1, 16, -1)] == torch.finfo(torch.float32).min).all()
    assert outputs.logits[query_mask[:, None, :].expand(-1, 16, -1)].abs().max() < 100


def test_image_queries_are_class_embeddings_of_the_query_image(tokenizer):
    model = build()
    query_pixel_values = pixel_batch(model.config, seed=3)
    query_embeds = model.image_query_embeddings(query_pixel_values)
    assert query_embeds.shape == (2, model.config.projection_dim)
    class_embeds = model(pixel_values=query_pixel_values, **queries(tokenizer, ["x"])).class_embeds
    for image in range(2):
        assert (class_embeds[image] == query_embeds[image]).all(dim=-1).any()
    outputs = model(pixel_values=pixel_batch(model.config), query_embeds=query_embeds[:, None])
    assert outputs.logits.shape == (2, 16, 1) and outputs.text_model_output is None


def test_the_head_trains(tokenizer):
    model = build().train()
    inputs = queries(tokenizer, ["a red circle", "a blue square"])
    labels = [
        {"class_labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]])},
        {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.5, 0.5]])},
    ]
    pixel_values = pixel_batch(model.config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = model(pixel_values=pixel_values, labels=labels, **inputs).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_bad_queries_are_refused(tokenizer):
    model = build()
    with pytest.raises(ValueError, match="multiple"):
        model(pixel_values=pixel_batch(model.config), **tokenizer(["a", "b", "c"], padding=True, return_tensors="pt"))
    with pytest.raises(ValueError, match="query_embeds"):
        model(pixel_values=pixel_batch(model.config))
    with pytest.raises(ValueError, match="`input_ids` holds no queries"):
        model(pixel_values=pixel_batch(model.config), input_ids=torch.zeros(0, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="got an empty list of texts"):
        tokenizer([], padding=True, return_tensors="pt")


def test_boxes_map_back_through_resize_and_crop():
    processor = VitlmImageProcessor(size=32, crop_size=32)
    outputs = {"logits": torch.full((1, 1, 1), 5.0), "pred_boxes": torch.tensor([[[0.5, 0.5, 1.0, 1.0]]])}
    # a 64x96 (h x w) image is resized to 32x48, then cropped to its middle 32x32 (x 8..40): x 16..80 originally
    [result] = processor.post_process_object_detection(outputs, threshold=0.5, target_sizes=[(64, 96)])
    torch.testing.assert_close(result["boxes"], torch.tensor([[16.0, 0.0, 80.0, 64.0]]))
    squash = VitlmImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False)
    [result] = squash.post_process_object_detection(outputs, threshold=0.5, target_sizes=[(64, 96)])
    torch.testing.assert_close(result["boxes"], torch.tensor([[0.0, 0.0, 96.0, 64.0]]))


def test_post_processing_thresholds_and_optional_nms():
    processor = VitlmImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False)
    boxes = torch.tensor([[[0.5, 0.5, 0.4, 0.4], [0.51, 0.5, 0.4, 0.4], [0.2, 0.2, 0.1, 0.1]]])
    logits = torch.tensor([[[2.0, -9.0], [3.0, -9.0], [-1.0, -9.0]]])
    outputs = {"logits": logits, "pred_boxes": boxes}
    [plain] = processor.post_process_object_detection(outputs, threshold=0.1)
    assert plain["scores"].tolist() == pytest.approx(torch.sigmoid(torch.tensor([3.0, 2.0, -1.0])).tolist())
    [suppressed] = processor.post_process_object_detection(outputs, threshold=0.1, nms_threshold=0.5)
    assert suppressed["scores"].tolist() == pytest.approx(torch.sigmoid(torch.tensor([3.0, -1.0])).tolist())
    for bad in ({"threshold": 1.5}, {"threshold": -0.1}, {"nms_threshold": 0.0}):
        with pytest.raises(ValueError, match="threshold"):
            processor.post_process_object_detection(outputs, **bad)


def test_the_pipeline_returns_boxes_in_original_pixels(tmp_path, tokenizer):
    model = build()
    image_processor = VitlmImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False)
    model.save_pretrained(tmp_path)
    VitlmDualEncoderProcessor(image_processor, tokenizer).save_pretrained(tmp_path)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8))

    detector = pipeline("zero-shot-object-detection", model=str(tmp_path))
    results = detector(image, candidate_labels=["a red circle", "a blue square"], threshold=0.0)
    assert len(results) == 2 * 16 and {r["label"] for r in results} == {"a red circle", "a blue square"}
    with torch.no_grad():
        outputs = model(
            pixel_values=image_processor(image)["pixel_values"], **tokenizer(["a blue square"], return_tensors="pt")
        )
    expected = outputs.pred_boxes[0] * torch.tensor([80, 48, 80, 48])
    corners = torch.cat([expected[:, :2] - expected[:, 2:] / 2, expected[:, :2] + expected[:, 2:] / 2], dim=1)
    corners = torch.minimum(corners.clamp(min=0), torch.tensor([80.0, 48.0, 80.0, 48.0]))
    best = max((r for r in results if r["label"] == "a blue square"), key=lambda r: r["score"])
    index = outputs.logits[0, :, 0].argmax()
    assert best["score"] == pytest.approx(outputs.logits[0, index, 0].sigmoid().item(), abs=1e-5)
    box = [best["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")]
    assert box == corners[index].int().tolist()
    assert all(0 <= r["box"]["xmax"] <= 80 and 0 <= r["box"]["ymax"] <= 48 for r in results)


def test_query_embeddings_must_match_the_image_batch():
    model = build()
    with pytest.raises(ValueError, match="query_embeds"):
        model(pixel_values=pixel_batch(model.config), query_embeds=torch.randn(3, 1, model.config.projection_dim))


def test_queries_shared_by_every_image_are_encoded_once_with_the_same_result(tokenizer):
    model = build()
    pixel_values = pixel_batch(model.config)
    alone = [
        model(pixel_values=pixel_values[i : i + 1], **tokenizer(texts, padding=True, return_tensors="pt"))
        for i, texts in enumerate([["a red circle", "a blue square"], ["a green star", "a red circle"]])
    ]
    shared = model(pixel_values=pixel_values, **queries(tokenizer, ["a red circle", "a blue square"]))
    assert shared.text_model_output.pooler_output.shape[0] == 2  # encoded once for both images
    torch.testing.assert_close(shared.logits[0], alone[0].logits[0], atol=1e-5, rtol=0)
    texts = ["a red circle", "a blue square", "a green star", "a red circle"]  # two queries for each image, in order
    separate = model(pixel_values=pixel_values, **tokenizer(texts, padding=True, return_tensors="pt"))
    assert separate.text_model_output.pooler_output.shape[0] == 4
    for i in range(2):
        torch.testing.assert_close(separate.logits[i], alone[i].logits[0], atol=1e-5, rtol=0)
