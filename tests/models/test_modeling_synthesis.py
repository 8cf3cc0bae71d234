"""The synthesis inpainting head: its config, tokenizer, loss, MaskGIT sampling and `inpaint` (several completions,
deterministic per seed, every unmasked pixel kept, bad masks refused)."""

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import AutoConfig, AutoModelForMaskedImageModeling

from tests.conftest import tiny_config
from vitlm import (
    VitlmImageProcessor,
    VitlmViTConfig,
    VitlmViTForInpaintingSynthesis,
    VitlmViTModel,
    VitlmViTSynthesisConfig,
)
from vitlm.models.image_processing_vitlm import as_pil_image, as_rgb
from vitlm.models.inpainting_utils import patchify
from vitlm.presets import preset_path


def model(seed=0, **overrides):
    """The tiny synthesis model with a random codebook (a trained one is fitted by k-means), so that codes differ."""
    torch.manual_seed(seed)
    built = VitlmViTForInpaintingSynthesis(tiny_config("vit_synthesis", **overrides)).eval()
    built.codebook.normal_()
    return built


def processor():
    return VitlmImageProcessor.from_pretrained(preset_path("synthesis-tiny-test"))


def picture(width=32, height=32, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return PIL.Image.fromarray(pixels)


def blob(width=32, height=32):
    mask = np.zeros((height, width), dtype=bool)
    mask[height // 4 : height // 2 + 2, width // 3 : 2 * width // 3] = True
    return mask


def test_registered_with_the_masked_image_modeling_auto_class():
    config = tiny_config("vit_synthesis")
    assert type(AutoConfig.for_model("vitlm_vit_synthesis")) is VitlmViTSynthesisConfig
    assert type(AutoModelForMaskedImageModeling.from_config(config)) is VitlmViTForInpaintingSynthesis
    with pytest.raises(ValueError, match="needs a VitlmViTSynthesisConfig"):
        VitlmViTForInpaintingSynthesis(tiny_config("vit"))


def test_head_fields_live_in_the_head_config():
    with pytest.raises(
        ValueError, match="`codebook_size` is a field of the synthesis inpainting head.*VitlmViTSynthesisConfig"
    ):
        VitlmViTConfig(codebook_size=8)
    with pytest.raises(ValueError, match="`code_patch_size` \\(3\\) must divide `patch_size` \\(8\\)"):
        tiny_config("vit_synthesis", code_patch_size=3)
    with pytest.raises(ValueError, match="needs `use_mask_token=True`"):
        tiny_config("vit_synthesis", use_mask_token=False)
    with pytest.raises(ValueError, match="sampling_temperature"):
        tiny_config("vit_synthesis", sampling_temperature=-1.0)
    config = VitlmViTSynthesisConfig.from_encoder_config(tiny_config("vit"), codebook_size=32)
    assert config.use_mask_token and config.codebook_size == 32 and config.hidden_size == 32
    assert config.codes_per_patch == 4
    with pytest.raises(ValueError, match="needs a plain ViT encoder"):
        VitlmViTSynthesisConfig.from_encoder_config(tiny_config("hybrid"))


def test_encoder_loads_alone_from_a_saved_synthesis_model(tmp_path):
    synthesis = model()
    synthesis.save_pretrained(tmp_path)
    encoder = VitlmViTModel.from_pretrained(tmp_path).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(encoder(pixels).last_hidden_state, synthesis.vit(pixels).last_hidden_state)
    assert not hasattr(encoder.config, "codebook_size")


def test_tokenize_and_code_pixels_invert_each_other_on_codewords():
    synthesis = model()
    pixels = torch.randn(2, 3, 32, 32)
    squares = synthesis.pixel_squares(pixels)  # (2, 16 patches, 4 squares, 48)
    assert squares.shape == (2, 16, 4, 48)
    synthesis.codebook = squares.reshape(-1, 48)[:16].clone()  # the first four patches' squares
    codes = synthesis.tokenize(pixels)
    assert torch.equal(codes[0, :4].flatten(), torch.arange(16))
    assert torch.equal(synthesis.code_pixels(codes)[0, :4], patchify(pixels, 8)[0, :4])


def test_loss_is_the_cross_entropy_of_masked_patches_which_the_encoder_never_reads():
    synthesis = model()
    pixels = torch.randn(2, 3, 32, 32)
    masked = torch.zeros(2, 16, dtype=torch.bool)
    masked[0, :3], masked[1, 5:13] = True, True
    with torch.no_grad():
        outputs = synthesis(pixels, bool_masked_pos=masked)
        changed = pixels.clone()
        changed[:, :, :8, :24] = 5.0  # the pixels of patches 0-2, masked in image 0 only
        again = synthesis(changed, bool_masked_pos=masked)
    targets = synthesis.tokenize(pixels)
    per_code = torch.nn.functional.cross_entropy(outputs.logits.flatten(0, 2), targets.flatten(), reduction="none")
    per_patch = per_code.view(2, 16, 4).mean(-1)
    expected = (per_patch[0, :3].mean() + per_patch[1, 5:13].mean()) / 2
    assert outputs.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert outputs.logits.shape == (2, 16, 4, 16) and torch.equal(outputs.mask, masked.float())
    assert torch.equal(again.logits[0], outputs.logits[0])  # image 0 hides what changed
    assert not torch.equal(again.logits[1], outputs.logits[1])  # image 1 sees it


def test_sampling_fills_every_masked_patch_with_codewords_and_keeps_the_rest():
    synthesis = model()
    pixels = torch.randn(1, 3, 32, 32)
    masked = torch.zeros(1, 16, dtype=torch.bool)
    masked[0, 4:11] = True
    for steps in (1, 3, 8):
        samples = synthesis.sample_patches(pixels, masked, num_samples=2, steps=steps)
        assert samples.shape == (2, 16, 192)
        assert torch.equal(samples[:, ~masked[0]], patchify(pixels, 8).expand(2, -1, -1)[:, ~masked[0]])
        squares = samples[:, masked[0]].reshape(2, 7, 2, 4, 2, 4, 3).permute(0, 1, 2, 4, 3, 5, 6).reshape(-1, 48)
        assert (squares[:, None] == synthesis.codebook[None]).all(-1).any(-1).all()  # every square a codeword
    with pytest.raises(ValueError, match="`bool_masked_pos` must have shape"):
        synthesis.sample_patches(pixels, masked[:, :8])
    with pytest.raises(ValueError, match="`steps` must be a positive integer"):
        synthesis.sample_patches(pixels, masked, steps=0)


def test_inpaint_is_deterministic_per_seed_diverse_across_seeds_and_keeps_unmasked_pixels():
    synthesis, image_processor = model(), processor()
    image, mask = picture(), blob()
    first = synthesis.inpaint(image, mask, image_processor, num_samples=3, seed=7)
    again = synthesis.inpaint(image, mask, image_processor, num_samples=3, seed=7)
    other = synthesis.inpaint(image, mask, image_processor, num_samples=3, seed=8)
    original = np.asarray(image)
    assert len(first) == 3
    for a, b, c in zip(first, again, other):
        a, b, c = np.asarray(a), np.asarray(b), np.asarray(c)
        assert np.array_equal(a, b)
        assert np.array_equal(a[~mask], original[~mask]) and np.array_equal(c[~mask], original[~mask])
    samples = [np.asarray(sample)[mask] for sample in first + other]
    assert all(not np.array_equal(samples[0], sample) for sample in samples[1:])  # each seed and sample its own
    greedy = [
        np.asarray(s)
        for seed in (1, 2)
        for s in synthesis.inpaint(image, mask, image_processor, seed=seed, temperature=0)
    ]
    assert np.array_equal(greedy[0], greedy[1])  # temperature 0: the most likely codes, whatever the seed


def test_samples_are_blended_into_the_image_unless_asked_to_paste():
    """With every codeword one flat dark colour, a pasted sample paints the hole that colour; blended, the sample's
    (flat) detail is kept and its level meets the grey around the hole, so the hole comes back grey."""
    synthesis, image_processor = model(), processor()
    synthesis.codebook.fill_(-1.5)
    image, mask = PIL.Image.new("RGB", (32, 32), (128, 128, 128)), blob()
    (pasted,) = synthesis.inpaint(image, mask, image_processor, blend=False)
    (blended,) = synthesis.inpaint(image, mask, image_processor)
    pasted, blended = np.asarray(pasted).astype(int), np.asarray(blended).astype(int)
    assert len(np.unique(pasted[mask], axis=0)) == 1 and np.abs(pasted[mask] - 128).min() > 50
    assert np.abs(blended[mask] - 128).max() <= 1
    assert np.array_equal(blended[~mask], np.asarray(image)[~mask])


def test_inpaint_takes_any_image_the_processor_takes(tmp_path):
    """A file path, an array or a channels-first tensor of the same pixels give the PIL image's completions; a
    greyscale array is completed as the RGB image the processor makes of it."""
    synthesis, image_processor = model(), processor()
    image, mask = picture(), blob()
    expected = np.asarray(synthesis.inpaint(image, mask, image_processor, seed=3)[0])
    image.save(tmp_path / "a photo.png")
    pixels = np.asarray(image)
    for same in (
        str(tmp_path / "a photo.png"),
        tmp_path / "a photo.png",
        pixels,
        torch.from_numpy(pixels.copy()).permute(2, 0, 1),
    ):
        assert np.array_equal(np.asarray(synthesis.inpaint(same, mask, image_processor, seed=3)[0]), expected)
    grey = image.convert("L")
    (filled,) = synthesis.inpaint(np.asarray(grey), mask, image_processor, seed=3)
    assert np.array_equal(np.asarray(filled)[~mask], np.asarray(grey.convert("RGB"))[~mask])


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I", "F", "CMYK", "YCbCr"])
def test_unmasked_pixels_are_kept_bit_for_bit_at_odd_sizes_in_every_mode(mode):
    synthesis, image_processor = model(), processor()
    rgb = picture(37, 23, seed=1)
    image = rgb.convert(mode) if mode not in ("I;16", "I", "F") else rgb.convert("L").convert(mode)
    mask = blob(37, 23)
    expected = np.asarray(as_rgb(as_pil_image(image)))
    for sample in synthesis.inpaint(image, mask, image_processor, num_samples=2, seed=0):
        assert sample.mode == "RGB" and sample.size == (37, 23)
        assert np.array_equal(np.asarray(sample)[~mask], expected[~mask])


@pytest.mark.parametrize(
    "mask,message",
    [
        (np.zeros((32, 32), dtype=bool), "covers no pixel"),
        (np.ones((32, 32), dtype=np.uint8), "covers every pixel"),
        (blob(32, 16), "has size 32x16 \\(width x height\\), the image 32x32"),
        (np.tile(np.array([0, 128, 255], dtype=np.uint8), (32, 11))[:, :32], "must be binary.*3 values: 0, 128, 255"),
        (np.zeros((32, 32, 3), dtype=np.uint8), "must be 2-D"),
    ],
    ids=["empty", "full", "wrong-size", "non-binary", "3-D"],
)
def test_bad_masks_get_one_clear_message(mask, message):
    with pytest.raises(ValueError, match=message):
        model().inpaint(picture(), mask, processor())


def test_binary_masks_of_any_on_value_mean_the_same():
    synthesis, image_processor, image, mask = model(), processor(), picture(), blob()
    results = [
        np.asarray(synthesis.inpaint(image, value, image_processor, seed=3)[0])
        for value in (mask, mask.astype(np.uint8), mask.astype(np.uint8) * 255, PIL.Image.fromarray(mask))
    ]
    assert all(np.array_equal(results[0], result) for result in results[1:])


@pytest.mark.parametrize(
    "keyword,value", [("num_samples", 0), ("steps", 0), ("seed", -1), ("seed", 2**70), ("temperature", -0.5)]
)
def test_bad_sampling_arguments_are_refused(keyword, value):
    with pytest.raises(ValueError, match=f"`{keyword}` must be"):
        model().inpaint(picture(), blob(), processor(), **{keyword: value})
