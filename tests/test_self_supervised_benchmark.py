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
    assert [row["recipe"] for row in results["rows"]] == ["dino", "beit", "mae", "random init"]
    for row in results["rows"]:
        for name in ("shape", "colour"):
            assert len(row[name]) == 1 and 0.0 <= row[name][0] <= 1.0
            assert row[f"{name}_mean"] == row[name][0] and row[f"{name}_std"] == 0.0
    assert all(run["wall_s"] >= run["pretraining_s"] >= 0 for run in results["runs"])
    table = benchmark.markdown(results).splitlines()
    assert len(table) == 2 + 4 and all(line.count("|") == 4 for line in table)
    benchmark.plot(results, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_probe_sets_hold_one_held_out_object_each():
    from vitlm.data.shapes import COLOURS, HELD_OUT, SHAPES

    _, test_set = benchmark.probe_sets(0, 8, 16)
    pairs = {(SHAPES[row["shape"]], list(COLOURS)[row["colour"]]) for row in test_set}
    assert pairs <= HELD_OUT
