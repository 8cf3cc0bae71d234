"""The self-supervised benchmark's core on a tiny budget: every recipe pretrains, every tower is probed."""

import importlib.util
import pathlib

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "self_supervised.py"
spec = importlib.util.spec_from_file_location("self_supervised_benchmark", SCRIPT)
benchmark = importlib.util.module_from_spec(spec)
spec.loader.exec_module(benchmark)


def test_run_experiment_structure(tmp_path):
    results = benchmark.run_experiment(
        seeds=(0,), max_steps=2, batch_size=8, train_size=16, probe_train=32, probe_test=16, progress=False
    )
    recipes = ["dino", "beit", "mae", "supervised", "random init", "colour alone"]
    assert [row["recipe"] for row in results["rows"]] == recipes
    for row in results["rows"]:
        for name in ("shape", "colour", "shape_seen", "colour_seen"):
            assert len(row[name]) == 1 and 0.0 <= row[name][0] <= 1.0
            assert row[f"{name}_mean"] == row[name][0] and row[f"{name}_std"] == 0.0
    assert all(run["wall_s"] >= run["pretraining_s"] >= 0 for run in results["runs"] if "wall_s" in run)
    assert sum("wall_s" not in run for run in results["runs"]) == 1  # the colour-alone reference trains nothing
    table = benchmark.markdown(results).splitlines()
    assert len(table) == 2 + len(recipes) and all(line.count("|") == 6 for line in table)
    benchmark.plot(results, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_probe_sets_hold_one_held_out_object_each_or_none():
    from vitlm.data.shapes import COLOURS, HELD_OUT, SHAPES

    train_set, evaluation = benchmark.probe_sets(0, 32, 32)

    def pairs(dataset):
        return {(SHAPES[row["shape"]], list(COLOURS)[row["colour"]]) for row in dataset}

    assert pairs(evaluation[""]) <= HELD_OUT
    assert not pairs(evaluation["_seen"]) & HELD_OUT and not pairs(train_set) & HELD_OUT


def test_a_probe_on_colour_alone_never_names_the_shape_of_a_held_out_pair():
    # the reference row's reading: in training every colour comes with five shapes, never its held-out partner
    train_set, evaluation = benchmark.probe_sets(0, 512, 64)
    scores = benchmark.colour_alone_scores(train_set, evaluation)
    assert scores["shape"] == 0.0 and scores["colour"] == 1.0 and scores["colour_seen"] == 1.0
    assert scores["shape_seen"] > 1 / 6  # the colour's five shapes: one of five, above chance
