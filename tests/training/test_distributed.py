"""Training runs unchanged in two processes (CPU, gloo) under `torchrun` and `accelerate launch`, and ends with the
weights of a one-process run at the same global batch and seed.

Why the two runs see the same samples at every step: Trainer hands its `RandomSampler` to accelerate, which replaces
it with a `SeedableRandomSampler` seeded from Trainer's seed (+ the epoch), so every process draws the same
permutation, the one the single process draws. With `split_batches=False` (the default) each process batches that
permutation by its per-device size (4) and takes every second batch (`BatchSamplerShard`): rank 0 gets positions
0-3, rank 1 positions 4-7, then 8-11 and 12-15, ... — at each step together the 8 samples the single process takes
at batch 8. DDP averages the two ranks' gradients of their per-batch mean losses, which is the gradient of the mean
loss over all 8; gradient clipping and AdamW then act on identical gradients. Nothing else is random: the training
set gets the evaluation transforms and the model has no dropout (`distributed_script.py`).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = Path(__file__).with_name("distributed_script.py")
sys.path.insert(0, str(SCRIPT.parent))
from distributed_script import MAX_STEPS, build_model  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(launcher: list[str], output_dir: Path, env=None) -> tuple[dict, dict]:
    """Runs the script under `launcher`; returns (final weights, results.json)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    done = subprocess.run(
        [*launcher, str(SCRIPT), str(output_dir)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((output_dir / "results.json").read_text())
    return load_file(output_dir / "model.safetensors"), results


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    return launch([sys.executable], tmp_path_factory.mktemp("one") / "out")


def assert_same_training(run, one_process):
    weights, results = run
    reference, reference_results = one_process
    assert results["world_size"] == 2
    assert reference_results["world_size"] == 1
    # the step losses (averaged over the processes) equal the single process's: the same samples at every step
    assert len(results["losses"]) == MAX_STEPS
    torch.testing.assert_close(results["losses"], reference_results["losses"], rtol=0, atol=1e-5)
    # evaluation is sharded over the processes and gathered back
    assert results["metrics"]["eval_loss"] == pytest.approx(reference_results["metrics"]["eval_loss"], abs=1e-5)

    initial = build_model().state_dict()
    assert weights.keys() == reference.keys() == initial.keys()
    assert max((reference[name] - initial[name]).abs().max() for name in initial) > 1e-3  # training moved them
    difference = max((weights[name] - reference[name]).abs().max() for name in reference)
    print(f"max abs weight difference, 2 processes vs 1: {difference:.2e}")
    assert difference <= 1e-5


def test_torchrun_two_processes_match_one(tmp_path, one_process):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    run = launch([*launcher, "--master_port", str(free_port())], tmp_path / "out")
    assert_same_training(run, one_process)


def test_accelerate_launch_two_processes_match_one(tmp_path, one_process):
    # `--multi_gpu` is accelerate's torchrun launcher; without GPUs the processes train on CPU over gloo.
    # (`--cpu --num_processes 2` would run a single process: accelerate's multi-CPU launch goes through mpirun.)
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launcher += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launcher += ["--main_process_port", str(free_port())]
    # a private HF_HOME: no accelerate config file of this machine's user changes the launch
    run = launch(launcher, tmp_path / "out", env={"HF_HOME": str(tmp_path / "hf_home")})
    assert_same_training(run, one_process)
