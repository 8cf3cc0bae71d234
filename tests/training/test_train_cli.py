"""`vitlm train` end to end on tiny presets and a tiny shapes world: the loss falls, the task's metrics are
computed, and the output folder reloads through the Auto classes with the trained weights and a model card."""

import json

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForMaskedImageModeling,
    AutoModelForZeroShotObjectDetection,
    AutoProcessor,
)

from vitlm.cli import main
from vitlm.data.shapes import CATEGORIES, HELD_OUT, generate, to_imagefolder
from vitlm.training.tasks import get_task

SHAPES = ["--dataset", "shapes", "--shapes-train", "64", "--shapes-test", "16", "--shapes-size", "32"]
TINY_DECODER = (
    "decoder_hidden_size=32,decoder_num_hidden_layers=1,decoder_num_attention_heads=4,decoder_intermediate_size=64"
)
CASES = {
    # task: (preset, extra arguments, Auto model class, processor class, metrics)
    "image-classification": (
        "vit-tiny-test",
        ["--lr", "2e-3"],
        AutoModelForImageClassification,
        AutoImageProcessor,
        ["accuracy", "top5_accuracy"],
    ),
    "zero-shot-image-classification": (
        "clip-tiny-test",
        ["--lr", "1e-3"],
        AutoModel,
        AutoProcessor,
        ["zero_shot_accuracy", "zero_shot_top5_accuracy"],
    ),
    "zero-shot-object-detection": (
        "clip-tiny-test",
        ["--lr", "1e-3"],
        AutoModelForZeroShotObjectDetection,
        AutoProcessor,
        ["map", "map_50", "map_75"],
    ),
    "masked-image-modeling": (
        "vit-tiny-test",
        ["--lr", "2e-3", "--config-overrides", TINY_DECODER],
        AutoModelForMaskedImageModeling,
        AutoImageProcessor,
        ["masked_psnr"],
    ),
}
PIPELINE_TAGS = {
    "image-classification": "image-classification",
    "zero-shot-image-classification": "zero-shot-image-classification",
    "zero-shot-object-detection": "zero-shot-object-detection",
    "masked-image-modeling": "image-to-image",
}


@pytest.mark.parametrize("task", list(CASES))
def test_train_end_to_end(task, tmp_path):
    preset, extra, auto_model, auto_processor, metric_names = CASES[task]
    out = tmp_path / task
    argv = ["train", task, "--model", preset, *SHAPES, "--output-dir", str(out), "--epochs", "3"]
    argv += ["--batch-size", "16", "--logging-steps", "1", "--seed", "0", *extra]
    assert main(argv) == 0

    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert len(losses) == 12  # 64 images / 16 per step, 3 epochs
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    evaluations = [entry for entry in history if "eval_loss" in entry]
    assert len(evaluations) == 4  # each epoch, then the final evaluation
    for name in metric_names:
        values = [entry[f"eval_{name}"] for entry in evaluations]
        assert all(isinstance(v, float) and v == v for v in values), (name, values)  # computed, not NaN

    # the folder reloads through the Auto classes, with the last checkpoint's weights
    model = auto_model.from_pretrained(out).eval()
    processor = auto_processor.from_pretrained(out)
    trained = load_file(out / "checkpoint-12" / "model.safetensors")
    for name, value in model.state_dict().items():
        if name in trained:
            torch.testing.assert_close(value, trained[name], rtol=0, atol=0)
    assert set(trained) <= set(model.state_dict())
    image = generate(1, seed=5, image_size=32)[0]["image"]
    inputs = processor(images=[image], return_tensors="pt")
    if task == "image-classification":
        assert model.config.id2label[3] == CATEGORIES[3]
        assert model(**inputs).logits.shape == (1, len(CATEGORIES))
    elif task == "zero-shot-object-detection":
        text = processor(
            text=["a photo of a red circle.", "a photo of a blue star."], return_tensors="pt", padding=True
        )
        outputs = model(pixel_values=inputs["pixel_values"], **text)
        assert outputs.logits.shape == (1, 16, 2)
    elif task == "masked-image-modeling":
        assert model(**inputs).loss > 0

    assert (out / "training_curves.png").stat().st_size > 1000
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "vitlm"
    assert card.data.pipeline_tag == PIPELINE_TAGS[task]
    assert card.data.datasets == ["vitlm-shapes"]
    assert task in card.data.tags and f"trained with `vitlm train {task}`" in card.text  # the one vocabulary
    description = get_task(task).description
    assert f"\n{description[0].upper()}{description[1:]}, trained with" in card.text  # acronyms keep their case
    reported = {result.metric_type: result.metric_value for result in card.data.eval_results}
    final = evaluations[-1]
    for name in [*metric_names, "loss"]:
        assert reported[name] == pytest.approx(final[f"eval_{name}"])
    assert "learning_rate" in card.text and "Intended use" in card.text
    assert "| num_train_epochs | 3.0 |" in card.text and "| max_steps |" not in card.text  # the one that stopped it
    assert "| lr_scheduler_type | cosine |" in card.text and "| optim | adamw_torch" in card.text  # values, not reprs
    assert f"```bash\nvitlm train {task} --model {preset} " in card.text  # how to reproduce it


def test_a_release_folder_float16_without_checkpoints_trains_on_in_float32(tmp_path):
    release, detector = tmp_path / "release", tmp_path / "detector"
    common = [*SHAPES, "--batch-size", "16", "--seed", "0", "--epochs", "1"]
    argv = ["train", "contrastive", "--model", "clip-tiny-test", *common, "--output-dir", str(release)]
    assert main([*argv, "--no-augment", "--no-checkpoints", "--save-dtype", "float16"]) == 0
    assert not list(release.glob("checkpoint-*")) and not list(release.glob("*.bin"))  # no pickles, no checkpoints
    weights = load_file(release / "model.safetensors")
    assert {value.dtype for value in weights.values()} == {torch.float16}
    assert (
        AutoModel.from_pretrained(release)
        .eval()(
            **AutoProcessor.from_pretrained(release)(
                images=[generate(1, seed=5, image_size=32)[0]["image"]], text=["a red circle"], return_tensors="pt"
            )
        )
        .logits_per_image.isfinite()
        .all()
    )

    # the next stage starts from the float16 release but trains in float32
    argv = ["train", "detect", "--model", str(release), *common, "--output-dir", str(detector), "--max-steps", "2"]
    assert main(argv) == 0
    trained = load_file(detector / "model.safetensors")
    assert {value.dtype for value in trained.values()} == {torch.float32}
    before = weights["vision_model.embeddings.stem.projection.weight"].float()
    after = trained["dual_encoder.vision_model.embeddings.stem.projection.weight"]
    assert not torch.equal(before, after)  # trained on from the release's weights
    assert (before - after).abs().max() < 0.05
    card = ModelCard.load(detector / "README.md").text
    assert "| max_steps | 2 |" in card and "| num_train_epochs |" not in card  # max_steps overrides --epochs
    # the detector's card reproduces the chain: the release's command, then its own
    commands = card.partition("```bash\n")[2].partition("\n```")[0]
    first, second = commands.splitlines()
    assert first.startswith("vitlm train contrastive --model clip-tiny-test ") and f"--output-dir {release} " in first
    assert second.startswith(f"vitlm train detect --model {release} ")


def test_caption_weights_are_checked_before_any_work(tmp_path, capsys):
    argv = ["train", "classify", "--model", "vit-tiny-test", *SHAPES, "--output-dir", str(tmp_path / "out")]
    assert main([*argv, "--caption-weights", "0,1,0"]) == 2
    assert "caption weights apply to contrastive training, not 'classify'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    contrastive = ["train", "contrastive", "--model", "clip-tiny-test", *argv[4:]]
    assert main([*contrastive, "--caption-weights", "0,0,0"]) == 2
    assert "caption weights must be finite, non-negative and not all zero" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):
        main([*argv, "--caption-weights", "shape"])
    assert "expected comma-separated numbers, got 'shape'" in capsys.readouterr().err


def test_classification_on_shapes_evaluates_on_the_classes_it_trained_on(tmp_path):
    # the shapes world's "test" split puts a held-out shape x colour pair first in every image: a classifier never
    # has those classes as labels, so evaluating it there scored 0 by construction
    from vitlm.training.run import load_datasets

    train_set, eval_set = load_datasets(
        "shapes", shapes_train=8, shapes_test=64, shapes_size=32, shapes_eval_split="validation"
    )
    held_out = {CATEGORIES.index(f"{colour} {shape}") for shape, colour in HELD_OUT}
    assert not held_out & set(eval_set["label"]) and not held_out & set(train_set["label"])

    out = tmp_path / "classifier"
    argv = ["train", "classify", "--model", "vit-tiny-test", "--dataset", "shapes", "--shapes-train", "512"]
    argv += ["--shapes-test", "128", "--shapes-size", "32", "--shapes-max-objects", "1", "--no-augment"]
    argv += ["--lr", "2e-3", "--max-steps", "300", "--eval-steps", "300", "--no-checkpoints", "--output-dir", str(out)]
    assert main(argv) == 0
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    chance = 1 / (len(CATEGORIES) - len(HELD_OUT))  # 40 classes in training
    assert history[-1]["eval_accuracy"] > 4 * chance, history[-1]


def test_train_classify_runs_a_pit(tmp_path):
    """`vitlm train classify --model pit-tiny-test`: a hierarchical tower trains through the same task entry."""
    out = tmp_path / "pit"
    argv = ["train", "classify", "--model", "pit-tiny-test", *SHAPES, "--output-dir", str(out), "--epochs", "3"]
    argv += ["--batch-size", "16", "--logging-steps", "1", "--seed", "0", "--lr", "2e-3", "--no-checkpoints"]
    assert main(argv) == 0
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3]), losses
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    assert type(model).__name__ == "VitlmPiTForImageClassification" and model.config.id2label[3] == CATEGORIES[3]
    inputs = AutoImageProcessor.from_pretrained(out)(images=[generate(1, seed=5, image_size=32)[0]["image"]])
    assert model(torch.as_tensor(inputs["pixel_values"])).logits.shape == (1, len(CATEGORIES))


def test_shapes_max_objects_reaches_both_splits():
    from vitlm.training.run import load_datasets

    for max_objects, counts in ((1, {1}), (3, {1, 2, 3})):
        splits = load_datasets(
            "shapes", shapes_train=40, shapes_test=40, shapes_size=32, shapes_max_objects=max_objects
        )
        for split in splits:
            assert {len(objects["bbox"]) for objects in split["objects"]} == counts


def test_twin_weight_trains_on_twins_and_logs_both_terms(tmp_path):
    out = tmp_path / "twins"
    argv = ["train", "contrastive", "--model", "clip-tiny-test", *SHAPES, "--shapes-max-objects", "1", "--no-augment"]
    argv += [
        "--twin-weight",
        "10",
        "--max-steps",
        "2",
        "--batch-size",
        "8",
        "--logging-steps",
        "1",
        "--no-checkpoints",
    ]
    assert main([*argv, "--output-dir", str(out)]) == 0
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    steps = [entry for entry in history if "twin_loss" in entry]
    assert [entry["step"] for entry in steps] == [1, 2]
    for entry in steps:
        assert entry["twin_loss"] > 0
        assert entry["loss"] == pytest.approx(entry["contrastive_loss"] + 10 * entry["twin_loss"], abs=1e-3)
    assert "eval_zero_shot_accuracy" in history[-1]  # evaluation batches have no twins


def test_twin_weight_is_checked(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    contrastive = ["train", "contrastive", "--model", "clip-tiny-test", *SHAPES, "--output-dir", str(out)]
    for value in ("-1", "nan"):
        assert main([*contrastive, "--twin-weight", value]) == 2
        assert "twin_weight must be a finite number >= 0" in capsys.readouterr().err
    classify = ["train", "classify", "--model", "vit-tiny-test", *contrastive[4:]]
    assert main([*classify, "--twin-weight", "1"]) == 2
    assert "twin consistency loss applies to contrastive training, not 'classify'" in capsys.readouterr().err
    assert not out.exists()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = to_imagefolder(generate(8, seed=0, image_size=32), tmp_path / "no-twins")
    argv = ["train", "contrastive", "--model", "clip-tiny-test", "--dataset", str(folder), "--output-dir", str(out)]
    assert main([*argv, "--twin-weight", "1"]) == 2
    assert "the dataset has no twins column" in capsys.readouterr().err


@pytest.mark.parametrize("preset", ["clip-tiny-test", "shapes-clip-small"])
def test_a_preset_dual_encoder_tokenizes_as_open_clip_without_it(preset, monkeypatch):
    """Training a dual-encoder preset takes CLIP's BPE from the presets' own files, not from open_clip (the `convert`
    extra): the ids equal open_clip's at the model's context length."""
    import open_clip

    import vitlm.clip_bpe
    from vitlm.training.run import load_model

    def no_open_clip(*args, **kwargs):
        raise AssertionError("open_clip's vocabulary file was read")

    monkeypatch.setattr(vitlm.clip_bpe, "default_bpe_path", no_open_clip)
    model, processor = load_model("zero-shot-image-classification", preset)
    context = model.config.text_config.max_position_embeddings
    texts = ["a red circle", "A photo of a PINK cross!", "a blue square " * 20]
    ids = processor.tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt")["input_ids"]
    assert torch.equal(ids, open_clip.get_tokenizer("ViT-B-32", context_length=context)(texts))


def test_a_converter_source_is_converted_in_scratch_that_is_removed(tmp_path, monkeypatch):
    """`load_model` on `timm:...` without a work folder converts into a scratch folder and removes it: nothing is
    left in the temporary directory, and the model loads with the converted weights."""
    import tempfile

    import vitlm.convert
    from vitlm.training.run import load_model

    real_load, converted = vitlm.convert.load, []
    monkeypatch.setattr(
        vitlm.convert, "load", lambda name: converted.append(real_load(name, random_weights=True)) or converted[-1]
    )
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model, _ = load_model("image-classification", "timm:test_vit")
    assert list(tmp_path.iterdir()) == []
    expected = converted[0].model.state_dict()
    assert all(torch.equal(tensor, expected[key]) for key, tensor in model.state_dict().items())


def test_classes_only_in_the_evaluation_split_are_warned_of(tmp_path, caplog):
    """An image folder's `test/bird` without a `train/bird`: the head is sized to 3 classes, one never trained."""
    import logging

    import PIL.Image

    from vitlm.training.run import load_datasets
    from vitlm.training.tasks import class_names_of, get_task, warn_of_untrained_classes

    for split, label in (("train", "cat"), ("train", "dog"), ("test", "cat"), ("test", "bird")):
        (tmp_path / split / label).mkdir(parents=True)
        for index in range(2):
            PIL.Image.new("RGB", (32, 32), (index * 90, 40, 200)).save(tmp_path / split / label / f"{index}.png")
    train_set, eval_set = load_datasets(str(tmp_path))
    spec = get_task("classify")
    names = class_names_of(spec, train_set)
    with caplog.at_level(logging.WARNING, logger="vitlm.training.tasks"):
        assert warn_of_untrained_classes(spec, train_set, eval_set, names) == ["bird"]
    assert "the evaluation split has 1 classes no training image has (bird)" in caplog.text
    assert warn_of_untrained_classes(spec, train_set, train_set, names) == []


def test_a_folder_holding_files_is_refused_unless_resumed_or_replaced(tmp_path, capsys, monkeypatch):
    """A second run into a folder would mix its files with the first's (a dual encoder's tokenizer beside a ViT
    classifier) and replace its model: refused unless --resume continues it or --overwrite replaces it whole."""
    out = tmp_path / "run"
    tiny = ["--dataset", "shapes", "--shapes-train", "8", "--shapes-test", "4", "--shapes-size", "32"]
    tiny += ["--max-steps", "1", "--batch-size", "4", "--no-checkpoints", "--output-dir", str(out)]
    assert main(["train", "contrastive", "--model", "clip-tiny-test", *tiny]) == 0
    first = sorted(path.name for path in out.iterdir())
    assert "tokenizer.json" in first
    capsys.readouterr()

    assert main(["train", "classify", "--model", "vit-tiny-test", *tiny]) == 2
    assert "already holds files: pass --resume to continue the run saved there, --overwrite" in capsys.readouterr().err
    assert sorted(path.name for path in out.iterdir()) == first  # untouched

    assert main(["train", "classify", "--model", "vit-tiny-test", *tiny, "--resume", "--overwrite"]) == 2
    assert "pass one of them" in capsys.readouterr().err
    assert main(["train", "classify", "--model", str(out), *tiny, "--overwrite"]) == 2
    assert "which --overwrite would delete before reading it" in capsys.readouterr().err
    assert sorted(path.name for path in out.iterdir()) == first
    monkeypatch.chdir(out)
    assert main(["train", "classify", "--model", "vit-tiny-test", *tiny[:-1], ".", "--overwrite"]) == 2
    assert "the current folder, one above it or the home folder" in capsys.readouterr().err

    monkeypatch.chdir(tmp_path)
    assert main(["train", "classify", "--model", "vit-tiny-test", *tiny, "--overwrite"]) == 0
    assert "tokenizer.json" not in {path.name for path in out.iterdir()}  # replaced whole, nothing of the first run
    assert AutoConfig.from_pretrained(out).architectures == ["VitlmViTForImageClassification"]


def test_a_preset_or_shapes_named_like_a_folder_here_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vit-tiny-test").mkdir()
    (tmp_path / "shapes").mkdir()
    out = ["--output-dir", str(tmp_path / "out")]
    assert main(["train", "classify", "--model", "vit-tiny-test", "--dataset", "shapes", *out]) == 2
    assert "'shapes' names both the generated shapes world and a folder here" in capsys.readouterr().err
    (tmp_path / "shapes").rmdir()
    assert (
        main(["train", "classify", "--model", "vit-tiny-test", "--dataset", "shapes", "--shapes-train", "4", *out])
        == 2
    )
    assert "'vit-tiny-test' names both a preset and a folder here: pass './vit-tiny-test'" in capsys.readouterr().err
