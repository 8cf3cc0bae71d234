import importlib
import inspect
import json
import pathlib
import tomllib

import pytest
import torch
from transformers import AutoConfig, AutoImageProcessor, AutoProcessor, AutoTokenizer

import vitlm
from vitlm.cli import main
from vitlm.clip_bpe import clip_tokenizer
from vitlm.presets import (
    build_empty_model,
    count_parameters,
    load_preset_config,
    model_class_for,
    preset_names,
    preset_path,
    preset_summary,
)

REPO = pathlib.Path(__file__).resolve().parent.parent

FAMILIES = {
    "vit-": "vitlm_vit",
    "hybrid-": "vitlm_hybrid",
    "swin-": "vitlm_swin",
    "clip-": "vitlm_dual_encoder",
    "shapes-clip-": "vitlm_dual_encoder",  # the demo's default models, trained on the shapes world
    "shapes-mae-": "vitlm_vit_mae",
    "shapes-synthesis-": "vitlm_vit_synthesis",
    "synthesis-": "vitlm_vit_synthesis",  # the synthesis inpainting head's tiny test preset
    "pit-": "vitlm_pit",
    "dino": "vitlm_vit",  # DINO and DINOv2 (self-supervised ViTs)
    "beit-": "vitlm_vit",
    "segmenter-": "vitlm_segmenter",
}
PUBLISHED = [
    "vit-tiny-patch16-224",
    "vit-small-patch16-224",
    "vit-base-patch16-224",
    "vit-large-patch16-224",
    "vit-base-patch32-384",
    "hybrid-r50-vit-base-patch16-384",
    "hybrid-r26-vit-small-patch32-224",
    "clip-vit-base-patch32",
    "clip-vit-base-patch16",
    "clip-vit-large-patch14",
    "pit-ti-224",
    "pit-s-224",
    "pit-b-224",
    "swin-tiny-patch4-window7-224",
    "swin-base-patch4-window12-384",
    "beit-base-patch16-224",
]
# published without a classifier (num_labels 0), as their self-supervised weights are
PUBLISHED_FEATURES = ["dinov2-small", "dinov2-base", "dinov2-small-reg", "dinov2-base-reg", "dino-vitb16"]
TINY = ["vit-tiny-test", "hybrid-tiny-test", "clip-tiny-test", "pit-tiny-test", "swin-tiny-test", "dinov2-tiny-test"]
TINY.append("beit-tiny-test")
TINY.append("segmenter-tiny-test")


def expected_model_type(name):
    return next(model_type for prefix, model_type in FAMILIES.items() if name.startswith(prefix))


def accepted_fields(config_class) -> set[str]:
    """Every keyword a config class (or one of its bases) takes."""
    return {name for cls in config_class.__mro__ if cls is not object for name in inspect.signature(cls).parameters}


def check_fields_are_known(fields: dict, config_class, where: str):
    """A misspelt field would silently become an extra attribute and leave the default in place."""
    unknown = set(fields) - accepted_fields(config_class) - {"model_type", "architectures", "num_labels"}
    assert not unknown, f"{where}: fields that {config_class.__name__} does not take: {sorted(unknown)}"


def test_every_expected_preset_exists():
    assert set(PUBLISHED + PUBLISHED_FEATURES + TINY) <= set(preset_names())


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="vit-base-patch16-224"):
        preset_path("vit-base-patch17-224")


@pytest.mark.parametrize("name", preset_names())
def test_preset_loads_as_its_family(name):
    folder = preset_path(name)
    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == expected_model_type(name)
    fields = json.loads((folder / "config.json").read_text())
    check_fields_are_known(fields, type(config), name)
    if config.model_type == "vitlm_dual_encoder":
        for key in ("vision_config", "text_config"):
            check_fields_are_known(fields[key], type(getattr(config, key)), f"{name}.{key}")
            assert getattr(config, key).model_type == fields[key]["model_type"]
    elif config.model_type == "vitlm_segmenter":
        check_fields_are_known(fields["vision_config"], type(config.vision_config), f"{name}.vision_config")
        assert config.num_labels == fields["num_labels"]
    else:
        published = 1000 if name in PUBLISHED else 0 if name in PUBLISHED_FEATURES else None
        assert config.num_labels == (published if published is not None else fields.get("num_labels", 2))
    for architecture in config.architectures:
        assert hasattr(vitlm, architecture), architecture


@pytest.mark.parametrize("name", preset_names())
def test_preprocessor_matches_the_model_resolution(name):
    processor = AutoImageProcessor.from_pretrained(preset_path(name))
    assert type(processor) is vitlm.VitlmImageProcessor
    config = load_preset_config(name)
    vision = getattr(config, "vision_config", config)
    if config.model_type == "vitlm_segmenter":  # a segmenter labels every pixel: the whole image, resized
        assert not processor.do_center_crop
        assert processor.size == {"height": vision.image_size, "width": vision.image_size}
    else:
        assert processor.do_center_crop and processor.crop_size == {
            "height": vision.image_size,
            "width": vision.image_size,
        }
        assert processor.size["shortest_edge"] >= vision.image_size
    pixel_values = processor(torch.zeros(3, 40, 50, dtype=torch.uint8)).pixel_values
    assert pixel_values.shape == (1, 3, vision.image_size, vision.image_size)


@pytest.mark.parametrize("name", TINY)
def test_tiny_presets_run(name):
    config = load_preset_config(name)
    model = model_class_for(config)(config).eval()
    assert count_parameters(model) < 1_000_000
    vision = getattr(config, "vision_config", config)
    pixel_values = torch.randn(2, 3, vision.image_size, vision.image_size)
    with torch.no_grad():
        if hasattr(config, "text_config"):
            input_ids = torch.tensor([[config.text_config.bos_token_id, 5, config.text_config.eos_token_id]] * 2)
            assert model(input_ids=input_ids, pixel_values=pixel_values).logits_per_image.shape == (2, 2)
        elif config.model_type == "vitlm_segmenter":
            grid = vision.output_grid(vision.image_size, vision.image_size)
            assert model(pixel_values).logits.shape == (2, config.num_labels, *grid)
        else:
            assert model(pixel_values).logits.shape == (2, config.num_labels)


def reference_model(library, name):
    """The original library's model with random weights, on the meta device."""
    module = importlib.import_module(library)
    with torch.device("meta"):
        if library == "timm":
            return module.create_model(name, pretrained=False)
        return module.create_model(name, pretrained=None, device="meta")


REFERENCES = [
    ("vit-tiny-patch16-224", "timm", "vit_tiny_patch16_224"),
    ("vit-small-patch16-224", "timm", "vit_small_patch16_224"),
    ("vit-base-patch16-224", "timm", "vit_base_patch16_224"),
    ("vit-large-patch16-224", "timm", "vit_large_patch16_224"),
    ("vit-base-patch32-384", "timm", "vit_base_patch32_384"),
    ("hybrid-r50-vit-base-patch16-384", "timm", "vit_base_r50_s16_384"),
    ("hybrid-r26-vit-small-patch32-224", "timm", "vit_small_r26_s32_224"),
    ("clip-vit-base-patch32", "open_clip", "ViT-B-32"),
    ("clip-vit-base-patch16", "open_clip", "ViT-B-16"),
    ("clip-vit-large-patch14", "open_clip", "ViT-L-14"),
    ("pit-ti-224", "timm", "pit_ti_224"),
    ("pit-s-224", "timm", "pit_s_224"),
    ("pit-b-224", "timm", "pit_b_224"),
    ("swin-tiny-patch4-window7-224", "timm", "swin_tiny_patch4_window7_224"),
    ("swin-base-patch4-window12-384", "timm", "swin_base_patch4_window12_384"),
    ("dinov2-small", "timm", "vit_small_patch14_dinov2"),
    ("dinov2-base", "timm", "vit_base_patch14_dinov2"),
    ("dinov2-small-reg", "timm", "vit_small_patch14_reg4_dinov2"),
    ("dinov2-base-reg", "timm", "vit_base_patch14_reg4_dinov2"),
    ("dino-vitb16", "timm", "vit_base_patch16_224.dino"),
    ("beit-base-patch16-224", "timm", "beit_base_patch16_224"),
]


def test_every_published_preset_has_a_reference():
    assert sorted(preset for preset, _, _ in REFERENCES) == sorted(PUBLISHED + PUBLISHED_FEATURES)


@pytest.mark.parametrize("preset,library,name", REFERENCES)
def test_parameter_count_matches_the_original(preset, library, name):
    """timm classifiers with their 1000-class head (self-supervised models without one); open_clip models with both
    towers, projections and temperature."""
    original = reference_model(library, name)
    model = build_empty_model(load_preset_config(preset))
    if library == "open_clip":  # the image tower first, so that a mismatch says where it is
        vision = count_parameters(model.vision_model) + count_parameters(model.visual_projection)
        assert vision == count_parameters(original.visual), f"{preset} image tower vs {library} {name}.visual"
    ours, theirs = count_parameters(model), count_parameters(original)
    assert ours == theirs, f"{preset}: {ours:,} parameters, {library} {name}: {theirs:,}"


def test_presets_json_has_exactly_the_presets():
    assert sorted(json.loads((REPO / "hub_configs" / "presets.json").read_text())) == preset_names()


@pytest.mark.parametrize("name", preset_names())
def test_stored_summary_matches_the_built_model(name):
    """`vitlm presets` prints hub_configs/presets.json (counting parameters takes torch); it must say what the config
    and the model built from it say."""
    config = load_preset_config(name)
    vision = getattr(config, "vision_config", config)
    expected = {
        "model_type": config.model_type,
        "image_size": vision.image_size,
        "stem_stride": vision.stem_stride,
        "hidden_size": vision.hidden_size,
        "num_hidden_layers": vision.num_hidden_layers,
        "num_attention_heads": vision.num_attention_heads,
        "num_parameters": count_parameters(build_empty_model(config)),
    }
    assert preset_summary(name) == expected, f"hub_configs/presets.json should hold {json.dumps({name: expected})}"


def test_cli_lists_every_preset(capsys):
    assert main(["presets"]) == 0
    output = capsys.readouterr().out
    lines = output.strip().splitlines()
    assert lines[0].startswith("| preset") and set(lines[1]) <= set("|-: ")
    for name in preset_names():
        assert f"| {name} " in output
    row = next(line for line in lines if line.startswith("| vit-base-patch16-224 "))
    assert "86,567,656" in row  # timm's vit_base_patch16_224 with its 1000-class head


def test_cli_rejects_an_unknown_preset(capsys):
    assert main(["presets", "no-such-preset"]) == 2
    assert "vit-base-patch16-224" in capsys.readouterr().err


def test_packaging_ships_every_package_and_the_presets():
    """`packages` is an explicit list (`packages.find` cannot see `vitlm.hub_configs`, mapped from hub_configs/)."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(init.parent.relative_to(REPO).parts) for init in (REPO / "vitlm").rglob("__init__.py")}
    missing = on_disk - set(setuptools["packages"])
    assert not missing, f"add {sorted(missing)} to [tool.setuptools] packages in pyproject.toml"
    assert "vitlm.hub_configs" in setuptools["packages"]
    assert setuptools["package-dir"]["vitlm.hub_configs"] == "hub_configs"
    patterns = setuptools["package-data"]["vitlm.hub_configs"]
    assert any(pathlib.PurePath("presets.json").match(pattern) for pattern in patterns)
    # the console script's entry point is a top-level module of its own (tests/test_cli_startup.py says why)
    entry_module = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["vitlm"].split(":")[0]
    assert entry_module in setuptools["py-modules"] and (REPO / f"{entry_module}.py").is_file()
    for name in preset_names():
        filenames = {path.name for path in (REPO / "hub_configs" / name).iterdir()}
        assert {"config.json", "preprocessor_config.json"} <= filenames
        for filename in filenames:
            path = (REPO / "hub_configs" / name / filename).relative_to(REPO / "hub_configs")
            assert any(path.match(pattern) for pattern in patterns), path


DUAL_ENCODERS = [name for name in preset_names() if expected_model_type(name) == "vitlm_dual_encoder"]
CLIP_VOCAB = [name for name in DUAL_ENCODERS if load_preset_config(name).text_config.vocab_size == 49408]


def test_dual_encoder_presets_with_clip_vocab_hold_its_tokenizer():
    assert set(CLIP_VOCAB) == set(DUAL_ENCODERS) - {"clip-tiny-test"}


@pytest.mark.parametrize("name", CLIP_VOCAB)
def test_preset_processor_tokenizes_like_open_clip(name):
    """These presets gave a 3-token vocabulary ("a red circle" -> [0, 1, 1, ...]) without a word of warning."""
    import open_clip

    config = load_preset_config(name)
    processor = AutoProcessor.from_pretrained(preset_path(name))
    assert isinstance(processor, vitlm.VitlmDualEncoderProcessor)
    tokenizer = processor.tokenizer
    assert isinstance(tokenizer, vitlm.VitlmCLIPTokenizer)
    assert tokenizer.model_max_length == config.text_config.max_position_embeddings
    assert tokenizer.get_vocab() == clip_tokenizer().get_vocab()
    ids = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert ids == (config.text_config.bos_token_id, config.text_config.eos_token_id, config.text_config.pad_token_id)
    texts = ["a red circle", "Two BLUE squares & a caf\u00e9!!", " ".join(["word"] * 100)]
    encoded = tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt")["input_ids"]
    context = config.text_config.max_position_embeddings
    assert torch.equal(encoded, open_clip.get_tokenizer("ViT-B-32", context_length=context)(texts))


def test_shapes_preset_processor_feeds_its_model():
    config = load_preset_config("shapes-clip-small")
    processor = AutoProcessor.from_pretrained(preset_path("shapes-clip-small"))
    inputs = processor(
        images=[torch.zeros(3, 50, 70)], text=["a red circle", "a blue square"], padding=True, return_tensors="pt"
    )
    torch.manual_seed(0)
    with torch.no_grad():
        logits = model_class_for(config)(config).eval()(**inputs).logits_per_image
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()


def test_preset_without_tokenizer_files_says_so():
    """clip-tiny-test has a toy vocabulary and no tokenizer: loading one is refused, naming the folder and the fix."""
    for auto_class in (AutoTokenizer, AutoProcessor):
        with pytest.raises(ValueError, match="holds no tokenizer files") as error:
            auto_class.from_pretrained(preset_path("clip-tiny-test"))
        assert "clip-tiny-test" in str(error.value) and "clip_tokenizer" in str(error.value)
    with pytest.raises(ValueError, match="got no vocabulary"):
        vitlm.VitlmCLIPTokenizer()


def test_readme_gets_a_processor_from_a_preset():
    """The README's snippet, run as written."""
    import open_clip

    readme = (REPO / "README.md").read_text()
    blocks = [block.split("```")[0] for block in readme.split("```python\n")[1:]]
    snippet = next(block for block in blocks if 'AutoProcessor.from_pretrained(preset_path("clip-' in block)
    namespace = {}
    exec(snippet, namespace)
    input_ids = namespace["inputs"]["input_ids"]
    expected = open_clip.get_tokenizer("ViT-B-32")(namespace["texts"])
    assert torch.equal(input_ids, expected[:, : input_ids.shape[1]])
    assert namespace["inputs"]["pixel_values"].shape == (1, 3, 224, 224)
