"""Self-supervised pretraining on the shapes world: how much shape and colour a linear probe reads from a frozen tower
after the same number of pretraining steps of DINO, BEiT and MAE, and from the same tower at random initialization.

The tower (every recipe's): a ViT of width 64, 4 blocks of 4 heads, MLP 128, 8x8 patches of 32x32 images (a 4x4
grid), [CLS] pooling for DINO's head and the probe, learned positions; `vit-tiny-test` widened by config overrides.
Every recipe runs through `vitlm.training.run.train` (the `vitlm train` path) on the same generated training images
(one object each, `--shapes-max-objects 1`), for `--max-steps` steps at batch `--batch-size`, AdamW at lr 1e-3 with
the recipes' own augmentations: DINO's multi-crop (2 global 32x32 crops of 60-100% of the image, 4 local 16x16 ones of
20-50%, hue jitter up to half the hue circle, half the views grey; `DINO_SETTINGS`, passed as `--recipe-settings`),
BEiT's blockwise masking of 40% of the patches with a 64-word k-means visual tokenizer, MAE's 75% random masking with a
2-block decoder of width 64. Random init is the tower as built from the same seed, untrained. The sanity row,
"supervised", is the same tower trained by `vitlm train classify` on the 48 shape x colour labels for as many steps.

The probe (`vitlm.training.probe.linear_probe`): frozen features (`pooler_output`, the [CLS] state) of
`--probe-train` training-split images, a multinomial logistic regression fitted by L-BFGS, scored on `--probe-test`
images of the "test" split, whose object is always one of the 8 held-out shape x colour pairs never drawn in
training (the claim: shape (6-way) and colour (8-way) read from an object of a combination the tower never saw), and
on as many "validation" images, new draws of the pairs seen in training. The "colour alone" row is the same probe on
the object's colour, one-hot: in training every colour comes with five of the six shapes, never with its held-out
partner, so a shape probe that leans on colour names a wrong shape on every held-out pair (0.0 there), while on seen
pairs colour alone already beats chance (one of five).

    OMP_NUM_THREADS=1 python benchmarks/self_supervised.py [--seeds 0 1 2] [--max-steps 500]

CPU budget: <= 45 minutes on two cores; measured at the defaults (3 seeds, 4 trained rows x 500 steps at batch 64,
2048 training images, probes on 2048 / 512 / 512 images) on a busy shared machine: see `wall_s` in the JSON, most of
it DINO (six views an image). `--max-steps` scales the pretraining part linearly; the JSON records each run's time.

Prints a markdown table, writes benchmarks/results/self_supervised.json and benchmarks/results/self_supervised.png.
"""

import argparse
import json
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
from tqdm.auto import tqdm

RESULTS = Path(__file__).resolve().parent / "results"
PRESET = "vit-tiny-test"
TOWER = "hidden_size=64,num_hidden_layers=4,num_attention_heads=4,intermediate_size=128"
MAE_DECODER = "decoder_hidden_size=64,decoder_num_hidden_layers=2,decoder_num_attention_heads=4"
MAE_DECODER += ",decoder_intermediate_size=128"
# row name -> `vitlm train` task; "supervised" (48-way labels, the shape x colour category) is the probe's sanity row
RECIPES = {"dino": "dino", "beit": "beit", "mae": "inpaint", "supervised": "classify"}
# DINO at this scale (`--recipe-settings`): a faster teacher for a short run, fewer prototypes, crops large enough to
# hold part of a 8-16 pixel object, and colour augmentation strong enough that matching views cannot rest on colour
DINO_SETTINGS = (
    "teacher_momentum=0.99,out_dim=256,hue_jitter=0.5,grayscale_probability=0.5,"
    "global_crop_scale=[0.6,1.0],local_crop_scale=[0.2,0.5]"
)
ATTRIBUTES = {"shape": lambda label: label // 8, "colour": lambda label: label % 8}  # CATEGORIES is shape-major
CLASSES = {"shape": 6, "colour": 8}
# a probe's scores: on the held-out pairs (the benchmark's claim) and on new images of the pairs seen in training
EVALUATIONS = {"": "test", "_seen": "validation"}
SCORES = [name + suffix for suffix in EVALUATIONS for name in ATTRIBUTES]  # shape, colour, shape_seen, colour_seen
COLOUR_ALONE = "colour alone"  # the reference row: a probe that reads nothing but the object's colour (one-hot)


def pretrained_tower(recipe: str, seed: int, max_steps: int, batch_size: int, lr: float, train_size: int, work: Path):
    """The frozen image tower a recipe leaves after `max_steps` steps (random init: none), and its processor."""
    from transformers import (
        AutoImageProcessor,
        AutoModel,
        AutoModelForImageClassification,
        AutoModelForMaskedImageModeling,
    )

    import vitlm  # noqa: F401  (registers the Auto classes)
    from vitlm.presets import load_preset_config, preset_path
    from vitlm.training.run import apply_overrides, parse_overrides, train

    if recipe == "random init":
        torch.manual_seed(seed)
        config = load_preset_config(PRESET)
        apply_overrides(config, parse_overrides(TOWER))
        return AutoModel.from_config(config), AutoImageProcessor.from_pretrained(preset_path(PRESET))
    overrides = TOWER + ("," + MAE_DECODER if recipe == "mae" else "")
    folder = work / f"{recipe}-{seed}"
    train(
        RECIPES[recipe],
        PRESET,
        "shapes",
        folder,
        max_steps=max_steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        shapes_train=train_size,
        shapes_test=64,
        shapes_size=32,
        shapes_max_objects=1,
        config_overrides=overrides,
        recipe_settings=DINO_SETTINGS if recipe == "dino" else None,
        logging_steps=max(max_steps // 10, 1),
        save_checkpoints=False,
    )
    if recipe == "mae":  # the encoder of the masked image model
        tower = AutoModelForMaskedImageModeling.from_pretrained(folder).vit
    elif recipe == "supervised":
        tower = AutoModelForImageClassification.from_pretrained(folder).vit
    else:
        tower = AutoModel.from_pretrained(folder)
    return tower, AutoImageProcessor.from_pretrained(folder)


def probe_sets(seed: int, train_size: int, test_size: int):
    """Training-split images, then one evaluation set per `EVALUATIONS` split (held-out pairs, seen pairs), one object
    each, with a column per attribute."""
    from vitlm.data.shapes import generate

    def draw(size, offset, split):
        dataset = generate(size, seed=offset + seed, split=split, image_size=32, max_objects=1)
        return dataset.map(lambda row: {name: read(row["label"]) for name, read in ATTRIBUTES.items()})

    evaluation = {
        suffix: draw(test_size, 2000 + 1000 * index, split)
        for index, (suffix, split) in enumerate(EVALUATIONS.items())
    }
    return draw(train_size, 1000, "train"), evaluation


def colour_alone_scores(train_set, evaluation) -> dict:
    """The probe fitted on the object's colour, one-hot, and nothing else: on the held-out pairs its shape guess is
    always wrong (in training each colour comes with five shapes, never its held-out partner), on seen pairs it beats
    chance (one of five). A tower's shape score near this row's says its probe leans on colour."""
    from vitlm.training.probe import fit_linear_classifier

    def one_hot(dataset):
        return torch.nn.functional.one_hot(torch.tensor(dataset["colour"]), CLASSES["colour"]).float()

    scores = {}
    for name in ATTRIBUTES:
        classifier = fit_linear_classifier(one_hot(train_set), torch.tensor(train_set[name]), CLASSES[name])
        for suffix, dataset in evaluation.items():
            with torch.no_grad():
                predicted = classifier(one_hot(dataset)).argmax(-1)
            scores[name + suffix] = (predicted == torch.tensor(dataset[name])).float().mean().item()
    return scores


def run_experiment(
    seeds=(0, 1, 2),
    max_steps: int = 500,
    batch_size: int = 64,
    lr: float = 1e-3,
    train_size: int = 2048,
    probe_train: int = 2048,
    probe_test: int = 512,
    progress: bool = True,
) -> dict:
    from vitlm.training.probe import linear_probe

    recipes = [*RECIPES, "random init"]
    runs = []
    with tempfile.TemporaryDirectory() as work:
        for seed in tqdm(seeds, desc="seeds", disable=not progress):
            train_set, evaluation = probe_sets(seed, probe_train, probe_test)
            for recipe in recipes:
                start = time.perf_counter()
                tower, processor = pretrained_tower(recipe, seed, max_steps, batch_size, lr, train_size, Path(work))
                pretraining_s = time.perf_counter() - start
                scores = {
                    name + suffix: linear_probe(tower, processor, train_set, dataset, label_column=name).accuracy
                    for name in ATTRIBUTES
                    for suffix, dataset in evaluation.items()
                }
                runs.append(
                    {
                        "recipe": recipe,
                        "seed": seed,
                        **scores,
                        "pretraining_s": round(pretraining_s, 1),
                        "wall_s": round(time.perf_counter() - start, 1),
                    }
                )
            runs.append({"recipe": COLOUR_ALONE, "seed": seed, **colour_alone_scores(train_set, evaluation)})
    rows = []
    for recipe in [*recipes, COLOUR_ALONE]:
        mine = [run for run in runs if run["recipe"] == recipe]
        row = {"recipe": recipe, "seeds": [run["seed"] for run in mine]}
        for name in SCORES:
            values = [run[name] for run in mine]
            row[name] = values
            row[f"{name}_mean"] = statistics.fmean(values)
            row[f"{name}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    setup = dict(
        preset=PRESET,
        tower=TOWER,
        dino_settings=DINO_SETTINGS,
        seeds=list(seeds),
        max_steps=max_steps,
        batch_size=batch_size,
        lr=lr,
        train_size=train_size,
        probe_train=probe_train,
        probe_test=probe_test,
    )
    return {"setup": setup, "rows": rows, "runs": runs}


def markdown(results: dict) -> str:
    lines = [
        "| recipe | shape, held-out pairs (6-way) | colour, held-out pairs (8-way) | shape, seen pairs "
        "| colour, seen pairs |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in results["rows"]:
        cells = [f"{row[f'{name}_mean']:.3f} ± {row[f'{name}_std']:.3f}" for name in SCORES]
        lines.append(f"| {row['recipe']} | {' | '.join(cells)} |")
    return "\n".join(lines)


def plot(results: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    from matplotlib import pyplot as plt

    rows = results["rows"]
    setup = results["setup"]
    figure, panels = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    width = 0.38
    for axes, (suffix, title) in zip(panels, (("", "held-out pairs"), ("_seen", "seen pairs")), strict=True):
        for offset, name in enumerate(ATTRIBUTES):
            positions = [index + (offset - 0.5) * width for index in range(len(rows))]
            means = [row[f"{name}{suffix}_mean"] for row in rows]
            spreads = [row[f"{name}{suffix}_std"] for row in rows]
            axes.bar(positions, means, width, yerr=spreads, capsize=3, label=name)
        axes.axhline(1 / CLASSES["shape"], color="gray", linestyle=":", linewidth=1)
        axes.axhline(1 / CLASSES["colour"], color="gray", linestyle="--", linewidth=1)
        axes.set_xticks(range(len(rows)), [row["recipe"] for row in rows], rotation=20, fontsize=8)
        axes.set_title(f"{title}: {setup['max_steps']} steps, {len(setup['seeds'])} seeds", fontsize=10)
    panels[0].set_ylabel("linear-probe accuracy")
    panels[0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train-size", type=int, default=2048)
    parser.add_argument("--probe-train", type=int, default=2048)
    parser.add_argument("--probe-test", type=int, default=512)
    args = parser.parse_args()
    start = time.perf_counter()
    results = run_experiment(
        seeds=args.seeds,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        train_size=args.train_size,
        probe_train=args.probe_train,
        probe_test=args.probe_test,
    )
    results["setup"].update(
        date=str(date.today()),
        machine=platform.processor() or platform.machine(),
        torch_threads=torch.get_num_threads(),
        wall_s=round(time.perf_counter() - start, 1),
    )
    print(markdown(results))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "self_supervised.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, RESULTS / "self_supervised.png")


if __name__ == "__main__":
    main()
