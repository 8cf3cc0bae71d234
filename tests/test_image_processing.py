import ast
import inspect
import json

import numpy as np
import open_clip
import PIL.Image
import pytest
import torch
from torchvision import transforms as T

import vitlm.models.image_processing_vitlm as module
from vitlm.models.image_processing_vitlm import VitlmImageProcessor

MEAN = torch.tensor(module.OPENAI_CLIP_MEAN)
STD = torch.tensor(module.OPENAI_CLIP_STD)


def normalized(value) -> torch.Tensor:
    """The processor's output for an 8-bit gray level (or RGB triple) `value`."""
    return (torch.tensor(value, dtype=torch.float32) / 255 - MEAN) / STD


WHITE = normalized(255)
BLACK = normalized(0)
PARITY_SIZES = [(300, 217), (97, 640), (224, 227), (1001, 223), (7, 5)]  # (224, 227): crop offset 1.5 rounds to 2


def random_rgb(width, height, seed=0) -> PIL.Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return PIL.Image.fromarray(pixels)


def tv_reference(image, resize, crop=None, interpolation=T.InterpolationMode.BICUBIC) -> torch.Tensor:
    steps = [T.Resize(resize, interpolation=interpolation)] + ([T.CenterCrop(crop)] if crop else [])
    steps += [T.ToTensor(), T.Normalize(module.OPENAI_CLIP_MEAN, module.OPENAI_CLIP_STD)]
    return T.Compose(steps)(image)[None]


@pytest.fixture
def small():
    return VitlmImageProcessor(size=12, crop_size=8)


# --- parity ---------------------------------------------------------------------------------------------------


def test_matches_open_clip_preprocess():
    _, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    processor = VitlmImageProcessor()
    images = [random_rgb(w, h, seed) for seed, (w, h) in enumerate(PARITY_SIZES)]
    ours = processor(images).pixel_values
    reference = torch.stack([preprocess(image) for image in images])
    assert ours.shape == (len(images), 3, 224, 224) and ours.dtype == torch.float32
    assert (ours - reference).abs().max() <= 1e-5


@pytest.mark.parametrize("width,height", PARITY_SIZES)
def test_shortest_edge_and_crop_match_torchvision(width, height):
    image = random_rgb(width, height)
    ours = VitlmImageProcessor(size=40, crop_size={"height": 32, "width": 24})(image).pixel_values
    assert (ours - tv_reference(image, 40, (32, 24))).abs().max() <= 1e-5


def test_crop_larger_than_image_pads_like_torchvision():
    image = random_rgb(97, 64)
    ours = VitlmImageProcessor(size=20, crop_size={"height": 31, "width": 37})(image).pixel_values
    assert (ours - tv_reference(image, 20, (31, 37))).abs().max() <= 1e-5
    assert torch.allclose(ours[0, :, 0, 0], BLACK)  # padding is black


@pytest.mark.parametrize("resample", [PIL.Image.Resampling.BICUBIC, PIL.Image.Resampling.BILINEAR])
@pytest.mark.parametrize("width,height", [(300, 217), (97, 640)])
def test_height_width_squash_matches_torchvision(width, height, resample):
    image = random_rgb(width, height)
    processor = VitlmImageProcessor(size={"height": 48, "width": 40}, do_center_crop=False, resample=resample)
    mode = T.InterpolationMode.BICUBIC if resample == PIL.Image.Resampling.BICUBIC else T.InterpolationMode.BILINEAR
    ours = processor(image).pixel_values
    assert ours.shape == (1, 3, 48, 40)
    assert (ours - tv_reference(image, (48, 40), interpolation=mode)).abs().max() <= 1e-5


# --- input kinds ----------------------------------------------------------------------------------------------


def rgb_inputs(image: PIL.Image.Image, tmp_path) -> dict:
    hwc = np.array(image)
    path = tmp_path / "image.png"
    image.save(path)
    return {
        "pil": image,
        "numpy HWC uint8": hwc,
        "numpy CHW uint8": hwc.transpose(2, 0, 1),
        "numpy float [0, 1]": hwc / 255,
        "numpy float16 [0, 1]": (hwc / 255).astype(np.float16),
        "numpy float [0, 255]": hwc.astype(np.float32),
        "numpy int64": hwc.astype(np.int64),
        "numpy uint16": hwc.astype(np.uint16) * 257,
        "numpy RGBA opaque": np.dstack([hwc, np.full(hwc.shape[:2], 255, np.uint8)]),
        "torch CHW uint8": torch.from_numpy(hwc).permute(2, 0, 1),
        "torch HWC uint8": torch.from_numpy(hwc),
        "torch CHW float [0, 1]": torch.from_numpy(hwc).permute(2, 0, 1) / 255,
        "torch bfloat16 [0, 255]": torch.from_numpy(hwc).permute(2, 0, 1).bfloat16(),
        "path str": str(path),
        "path object": path,
    }


def test_every_rgb_input_kind_gives_the_same_pixels(small, tmp_path):
    image = random_rgb(30, 20)
    expected = small(image).pixel_values
    assert expected.shape == (1, 3, 8, 8) and expected.dtype == torch.float32
    for name, value in rgb_inputs(image, tmp_path).items():
        assert torch.allclose(small(value).pixel_values, expected, atol=1e-6), name


def test_batches(small, tmp_path):
    image = random_rgb(30, 20)
    other = random_rgb(20, 30, seed=1)
    expected = torch.cat([small(image).pixel_values, small(other).pixel_values])
    image.save(tmp_path / "image.png")
    assert torch.equal(small([image, np.array(other)]).pixel_values, expected)
    assert torch.equal(small((str(tmp_path / "image.png"), other)).pixel_values, expected)

    same_size = image.resize((20, 30))
    expected = torch.cat([small(same_size).pixel_values, small(other).pixel_values])
    hwc = np.stack([np.array(same_size), np.array(other)])
    assert torch.equal(small(hwc).pixel_values, expected)
    assert torch.equal(small(torch.from_numpy(hwc).permute(0, 3, 1, 2)).pixel_values, expected)


def test_one_list_of_images_per_sample_is_one_flat_batch(small):
    # as CLIPProcessor takes them; these used to be refused ("unsupported image type list")
    images = [random_rgb(30, 20), random_rgb(20, 30, seed=1)]
    expected = small(images).pixel_values
    assert torch.equal(small([[images[0]], [images[1]]]).pixel_values, expected)
    assert torch.equal(small([images]).pixel_values, expected)


def test_grayscale_inputs(small):
    gray = np.random.default_rng(0).integers(0, 256, (20, 30), dtype=np.uint8)
    expected = small(PIL.Image.fromarray(gray).convert("RGB")).pixel_values
    raw = small(PIL.Image.fromarray(gray), do_normalize=False).pixel_values
    assert torch.equal(raw[:, 0], raw[:, 1]) and torch.equal(raw[:, 1], raw[:, 2])
    inputs = {
        "L": PIL.Image.fromarray(gray),
        "LA opaque": PIL.Image.fromarray(np.dstack([gray, np.full_like(gray, 255)])).convert("LA"),
        "I;16": PIL.Image.fromarray(gray.astype(np.uint16) * 257),
        "I": PIL.Image.fromarray(gray.astype(np.int32) * 257),
        "F [0, 1]": PIL.Image.fromarray(gray.astype(np.float32) / 255),
        "F [0, 255]": PIL.Image.fromarray(gray.astype(np.float32)),
        "2-D array": gray,
        "HW1 array": gray[..., None],
        "1HW tensor": torch.from_numpy(gray)[None],
    }
    assert inputs["I;16"].mode == "I;16" and inputs["I"].mode == "I" and inputs["F [0, 1]"].mode == "F"
    for name, value in inputs.items():
        assert torch.allclose(small(value).pixel_values, expected, atol=1e-6), name


def constant(processor, image) -> torch.Tensor:
    """The single color of a uniform image after processing, checking it is uniform."""
    pixels = processor(image).pixel_values[0]
    assert torch.allclose(pixels, pixels[:, :1, :1].expand_as(pixels))
    return pixels[:, 0, 0]


def test_16_bit_modes_map_their_full_range(small):
    assert torch.allclose(constant(small, PIL.Image.new("I;16", (4, 4), 65535)), WHITE)
    assert torch.allclose(constant(small, PIL.Image.new("I", (4, 4), 65535)), WHITE)
    assert torch.allclose(constant(small, PIL.Image.new("I;16", (4, 4), 128 * 257)), normalized(128))
    assert torch.allclose(constant(small, PIL.Image.new("I", (4, 4), 0)), BLACK)


def test_float_mode_scale(small):
    assert torch.allclose(constant(small, PIL.Image.new("F", (4, 4), 1.0)), WHITE)
    assert torch.allclose(constant(small, PIL.Image.new("F", (4, 4), 1.0004)), WHITE)  # rounding above 1: [0, 1]
    assert torch.allclose(constant(small, PIL.Image.new("F", (4, 4), 255.0)), WHITE)
    assert torch.allclose(constant(small, PIL.Image.new("F", (4, 4), 64.0)), normalized(64))


def test_transparency_is_composited_on_white(small):
    palette = PIL.Image.new("P", (4, 4), 0)
    palette.putpalette([10, 20, 30] * 256)
    transparent_palette = palette.copy()
    transparent_palette.info["transparency"] = 0
    color_keyed = PIL.Image.new("RGB", (4, 4))
    color_keyed.info["transparency"] = (0, 0, 0)  # PNG tRNS chunk
    transparent = {
        "RGBA": PIL.Image.new("RGBA", (4, 4), (0, 0, 0, 0)),
        "LA": PIL.Image.new("LA", (4, 4), (0, 0)),
        "PA": PIL.Image.new("PA", (4, 4), (0, 0)),
        "P with transparency": transparent_palette,
        "RGB with transparency": color_keyed,
        "RGBA array HWC": np.zeros((6, 5, 4), np.uint8),
        "RGBA tensor CHW": torch.zeros(4, 6, 5),
    }
    for name, image in transparent.items():
        assert torch.allclose(constant(small, image), WHITE), name
    half = constant(small, PIL.Image.new("RGBA", (4, 4), (0, 0, 0, 128)))
    assert torch.allclose(half, normalized(127))
    assert torch.allclose(constant(small, palette), constant(small, PIL.Image.new("RGB", (4, 4), (10, 20, 30))))


def test_cmyk(small):
    assert torch.allclose(constant(small, PIL.Image.new("CMYK", (4, 4), (0, 0, 0, 0))), WHITE)
    cyan = constant(small, PIL.Image.new("RGB", (4, 4), (0, 255, 255)))
    assert torch.allclose(constant(small, PIL.Image.new("CMYK", (4, 4), (255, 0, 0, 0))), cyan)


def test_file_path_applies_exif_orientation(tmp_path):
    image = random_rgb(20, 10)
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    image.save(tmp_path / "rotated.png", exif=exif)
    processor = VitlmImageProcessor(do_resize=False, do_center_crop=False)
    expected = processor(image.transpose(PIL.Image.Transpose.ROTATE_270)).pixel_values
    assert expected.shape == (1, 3, 20, 10)
    assert torch.equal(processor(str(tmp_path / "rotated.png")).pixel_values, expected)


def test_explicit_input_data_format_resolves_ambiguous_shapes(small):
    pixels = np.random.default_rng(0).integers(0, 256, (3, 8, 3), dtype=np.uint8)
    first = small(pixels, input_data_format="channels_first").pixel_values
    last = small(pixels, input_data_format="channels_last").pixel_values
    assert torch.allclose(first, small(pixels.transpose(1, 2, 0)).pixel_values)
    assert torch.allclose(last, small(PIL.Image.fromarray(pixels)).pixel_values)


# --- arguments ------------------------------------------------------------------------------------------------


def test_defaults():
    processor = VitlmImageProcessor()
    assert processor.size == {"shortest_edge": 224} and processor.crop_size == {"height": 224, "width": 224}
    assert processor.resample == PIL.Image.Resampling.BICUBIC and processor.do_convert_rgb
    assert processor.model_input_names == ["pixel_values"]
    assert torch.allclose(constant(processor, PIL.Image.new("RGB", (300, 250), "white")), WHITE)


def test_int_sizes():
    processor = VitlmImageProcessor(size=10, crop_size=6)
    assert processor.size == {"shortest_edge": 10} and processor.crop_size == {"height": 6, "width": 6}


def test_call_overrides_do_not_stick(small):
    image = random_rgb(30, 20)
    raw = small(image, do_rescale=False, do_normalize=False).pixel_values
    assert raw.max() > 1 and torch.equal(raw, raw.round())  # 0..255 values
    rescaled = small(image, do_normalize=False).pixel_values
    assert torch.allclose(rescaled, raw / 255) and rescaled.min() >= 0 and rescaled.max() <= 1
    assert small(image, size={"height": 5, "width": 7}, do_center_crop=False).pixel_values.shape == (1, 3, 5, 7)
    assert small(image, crop_size={"height": 4, "width": 6}).pixel_values.shape == (1, 3, 4, 6)
    assert small(image, do_resize=False, do_center_crop=False).pixel_values.shape == (1, 3, 20, 30)
    mean_half = small(image, image_mean=0.5, image_std=[0.5, 0.5, 0.5]).pixel_values
    assert torch.allclose(mean_half, rescaled * 2 - 1, atol=1e-6)
    assert torch.equal(small(image).pixel_values, small(image).pixel_values)
    assert small.size == {"shortest_edge": 12} and small.do_normalize


def test_return_tensors(small):
    image = random_rgb(30, 20)
    as_numpy = small(image, return_tensors="np").pixel_values
    assert isinstance(as_numpy, np.ndarray) and as_numpy.dtype == np.float32 and as_numpy.shape == (1, 3, 8, 8)
    assert isinstance(small(image, return_tensors=None).pixel_values, np.ndarray)
    assert np.allclose(as_numpy, small(image).pixel_values.numpy())


def test_do_convert_rgb_false_accepts_only_rgb(small):
    image = random_rgb(30, 20)
    assert torch.equal(small(image, do_convert_rgb=False).pixel_values, small(image).pixel_values)
    with pytest.raises(ValueError, match="mode 'L'.*do_convert_rgb"):
        small(image.convert("L"), do_convert_rgb=False)


def test_save_and_load_round_trip(tmp_path):
    processor = VitlmImageProcessor(
        size={"height": 20, "width": 16},
        resample=PIL.Image.Resampling.BILINEAR,
        crop_size={"height": 12, "width": 10},
        rescale_factor=1 / 127.5,
        image_mean=[0.5, 0.4, 0.3],
        image_std=[0.2, 0.25, 0.3],
    )
    before = processor.to_dict()
    processor.save_pretrained(tmp_path)
    assert "AutoImageProcessor" in json.loads((tmp_path / "preprocessor_config.json").read_text())["auto_map"]
    loaded = VitlmImageProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    assert processor.to_dict() == before and "auto_map" not in before  # saving left the processor as it was
    assert loaded.resample == PIL.Image.Resampling.BILINEAR
    images = [random_rgb(30, 20), random_rgb(97, 64, seed=1)]
    assert torch.equal(loaded(images).pixel_values, processor(images).pixel_values)
    overridden = VitlmImageProcessor.from_pretrained(tmp_path, crop_size={"height": 4, "width": 4})
    assert overridden(images).pixel_values.shape == (2, 3, 4, 4)


def test_module_imports_only_portable_packages():
    tree = ast.parse(inspect.getsource(module))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 0}
    assert {name.split(".")[0] for name in imported} <= {
        "math",
        "os",
        "concurrent",
        "numpy",
        "PIL",
        "torch",
        "transformers",
    }


# --- bad input ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "images,match",
    [
        ([], "empty batch"),
        (np.zeros((0, 3, 8, 8), np.uint8), "empty batch"),
        (np.zeros((0, 5, 3), np.uint8), "zero-sized"),
        (PIL.Image.new("RGB", (0, 5)), "zero-sized"),
        (np.zeros((8, 8, 2), np.uint8), "1, 3 or 4 channels"),
        (torch.zeros(5, 8, 8), "1, 3 or 4 channels"),
        (np.zeros((3, 8, 3), np.uint8), "input_data_format"),
        (np.zeros(8, np.uint8), "2-D .* or 3-D"),
        (np.zeros((1, 1, 8, 8, 3), np.uint8), "2-D .* or 3-D"),
        ([np.zeros((1, 8, 8, 3), np.uint8)], "2-D .* or 3-D"),
        (np.full((8, 8, 3), np.nan), "NaN or infinite"),
        (torch.full((3, 8, 8), float("inf")), "NaN or infinite"),
        (np.zeros((8, 8, 3), np.complex64), "unsupported image dtype complex64"),
        (np.zeros((8, 8, 3), bool), "unsupported image dtype bool"),
        (torch.zeros(3, 8, 8, dtype=torch.bool), "unsupported image dtype bool"),
        (np.full((8, 8, 3), 300), r"int64 image values must lie in \[0, 255\]"),
        (np.full((8, 8, 3), -0.5), r"float image values must lie in \[0, 1\] or \[0, 255\]"),
        (
            np.concatenate([np.full((8, 8, 3), 0.5), np.full((1, 8, 3), 1.01)]),
            r"\[0, 1\] or \[0, 255\], got \[0.5, 1.01\]",
        ),
        (np.ones((1, 2_000_000), np.uint8), r"a 2000000x1 image would be resized to 288,000,000 pixels to give"),
        (PIL.Image.new("F", (4, 4), 300.0), r"\[0, 1\] or \[0, 255\], got \[300, 300\]"),
        (PIL.Image.new("I", (4, 4), 70000), r"16-bit image \(mode 'I'\) values must lie in \[0, 65535\]"),
        ([PIL.Image.new("RGB", (4, 4)), 7], "unsupported image type int"),
        ([PIL.Image.new("RGB", (4, 4)), [PIL.Image.new("RGB", (4, 4))]], "unsupported image type list"),
    ],
)
def test_bad_images(small, images, match):
    with pytest.raises(ValueError, match=match):
        small(images)


def test_bad_files(small, tmp_path):
    missing = tmp_path / "missing.png"
    with pytest.raises(ValueError, match="cannot read image file .*missing.png"):
        small(str(missing))
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="cannot read image file .*corrupt.png"):
        small([PIL.Image.new("RGB", (4, 4)), corrupt])
    truncated = tmp_path / "truncated.png"
    random_rgb(30, 20).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(ValueError, match="cannot read image file .*truncated.png"):
        small(str(truncated))


def test_a_decompression_bomb_file_is_refused_as_unreadable(small, tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    random_rgb(30, 20).save(path)
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 100)  # 600 pixels: over twice the limit, PIL refuses
    with pytest.raises(ValueError, match="cannot read image file .*bomb.png.*decompression bomb"):
        small(str(path))


def test_images_that_cannot_be_batched(small):
    images = [random_rgb(30, 20), random_rgb(20, 30)]
    with pytest.raises(ValueError, match="different sizes after preprocessing"):
        small(images, do_center_crop=False)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"size": {"longest_edge": 224}}, r"`size` must be a dict with keys \['height', 'width'\] or"),
        ({"size": {"shortest_edge": 224, "height": 3}}, "`size` must be a dict with keys"),
        ({"size": "224"}, "`size` must be a dict with keys"),
        ({"size": {"shortest_edge": 0}}, "`size` values must be positive integers"),
        ({"size": {"height": -1, "width": 8}}, "`size` values must be positive integers"),
        ({"size": {"shortest_edge": 2.5}}, "`size` values must be positive integers"),
        ({"crop_size": {"shortest_edge": 8}}, r"`crop_size` must be a dict with keys \['height', 'width'\]"),
        ({"crop_size": {"height": 8, "width": 0}}, "`crop_size` values must be positive integers"),
        ({"image_mean": [0.5, 0.5]}, r"`image_mean` must have one value per RGB channel \(3\), got 2"),
        ({"image_std": [0.5] * 4}, r"`image_std` must have one value per RGB channel \(3\), got 4"),
        ({"image_std": [0.5, 0.0, 0.5]}, r"`image_std` values must be at least 1e-06"),
        ({"image_std": [0.5, 1e-45, 0.5]}, r"`image_std` values must be at least 1e-06"),
        ({"image_std": [0.5, float("nan"), 0.5]}, "`image_std` values must be finite numbers"),
        ({"image_mean": float("inf")}, "`image_mean` values must be finite numbers"),
        ({"image_mean": "0.5"}, r"`image_mean` must have one value per RGB channel \(3\), got '0.5'"),
        ({"rescale_factor": float("nan")}, "`rescale_factor` must be a positive number"),
        ({"rescale_factor": "x"}, "`rescale_factor` must be a positive number"),
        ({"rescale_factor": 0}, "`rescale_factor` must be a positive number"),
        ({"do_normalize": "false"}, "`do_normalize` must be true or false, got 'false'"),
        ({"size": {"shortest_edge": 100_000}}, "`size` values must be positive integers up to 8192"),
        ({"crop_size": {"height": 8, "width": 10**6}}, "`crop_size` values must be positive integers up to 8192"),
        ({"resample": 9}, "`resample` must be a PIL resampling filter"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VitlmImageProcessor(**kwargs)
    with pytest.raises(ValueError, match=match):
        VitlmImageProcessor()(random_rgb(8, 8), **kwargs)


def test_bad_input_data_format(small):
    with pytest.raises(ValueError, match="`input_data_format` must be"):
        small(random_rgb(8, 8), input_data_format="first")
    with pytest.raises(ValueError, match="needs 1, 3 or 4 channels, got 8"):
        small(np.zeros((8, 8, 3), np.uint8), input_data_format="channels_first")
