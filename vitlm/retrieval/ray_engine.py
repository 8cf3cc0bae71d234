"""The Ray Data engine: the same job as `engine.run_local`, spread over a Ray cluster (or a local Ray runtime).

CPU tasks read, decode and preprocess items (half a CPU each); a pool of `num_actors` actors holds the model, each on
`gpus_per_actor` GPUs (fractions share a GPU: 0.5 puts two replicas on each) or, without GPUs, on one CPU. The
driver receives the embeddings and writes the shards, in the same format and with the same rows as the
single-process engine; only the batches the model sees differ, which changes embeddings by float rounding (< 1e-6).
"""

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from .engine import BatchResult, describe_error, image_embeddings, pixel_shape, preprocess

DECODE_BATCH = 32  # items per decoding task
# decoding a file is light; and a request unlike the actors' keeps Ray from fusing decoding into them (it fuses
# operators that ask for the same resources), which would put decoding in series with the model
DECODE_CPUS = 0.5


def _decode_batch(batch: dict, source, image_processor, pixel_shape: tuple) -> dict:
    positions = batch["position"]
    pixels = np.zeros((len(positions), *pixel_shape), np.float32)
    errors = []
    for row, position in enumerate(positions.tolist()):
        try:
            pixels[row] = preprocess(source, image_processor, position).numpy()
            errors.append("")
        except Exception as error:  # a user's file can make PIL's plugins raise anything
            errors.append(describe_error(error))
    return {"position": positions, "pixel_values": pixels, "error": np.array(errors, dtype=object)}


class _EmbeddingActor:
    """Holds one replica of the model: on its GPU in bfloat16 when Ray gave it one, else on its CPU in float32."""

    def __init__(self, model):
        import ray

        if ray.get_gpu_ids():  # Ray sets CUDA_VISIBLE_DEVICES to the actor's GPUs
            model = model.to("cuda", torch.bfloat16)
        self.model = model.eval()

    def __call__(self, batch: dict) -> dict:
        good = batch["error"] == ""
        embeddings = np.zeros((len(good), self.model.config.projection_dim), np.float32)
        if good.any():
            embeddings[good] = image_embeddings(self.model, torch.from_numpy(batch["pixel_values"][good]))
        return {"position": batch["position"], "embedding": embeddings, "error": batch["error"]}


@contextlib.contextmanager
def ray_runtime(address: str | None, num_cpus: int | None):
    """Attach to the cluster at `address`, or start a local runtime with `num_cpus` (default: all), unless this
    process is attached already; a runtime started here is shut down at the end."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(
            address=address,
            num_cpus=None if address else num_cpus,
            include_dashboard=False,
            logging_level="warning",
            log_to_driver=False,
        )
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def run_ray(
    source,
    image_processor,
    model,
    batches: list[list[int]],
    address: str | None = None,
    num_cpus: int | None = None,
    num_actors: int = 1,
    gpus_per_actor: float | None = None,
) -> Iterator[BatchResult]:
    import ray

    positions = [position for batch in batches for position in batch]
    if not positions:
        return
    batch_size = max(len(batch) for batch in batches)
    shape = pixel_shape(image_processor)
    with ray_runtime(address, num_cpus):
        cpus = ray.cluster_resources().get("CPU", 0)
        needed = DECODE_CPUS + (0 if gpus_per_actor else num_actors)
        if cpus < needed:  # Ray would wait for them for ever
            raise ValueError(
                f"the Ray cluster has {cpus:g} CPUs; {num_actors} model replica(s) on CPUs and decoding need at least "
                f"{needed:g} (one per replica, {DECODE_CPUS:g} per decoding task)"
            )
        context = ray.data.DataContext.get_current()
        bars, context.enable_progress_bars = context.enable_progress_bars, False  # the job shows its own
        try:
            decoded = ray.data.from_items([{"position": position} for position in positions]).map_batches(
                _decode_batch,
                fn_kwargs={"source": source, "image_processor": image_processor, "pixel_shape": shape},
                batch_size=DECODE_BATCH,
                batch_format="numpy",
                num_cpus=DECODE_CPUS,
            )
            embedded = decoded.map_batches(
                _EmbeddingActor,
                fn_constructor_kwargs={"model": model},
                batch_size=batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=num_actors),
                num_gpus=gpus_per_actor or 0,
                num_cpus=0 if gpus_per_actor else 1,
            )
            for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
                good = batch["error"] == ""
                errors = list(zip(batch["position"][~good].tolist(), batch["error"][~good].tolist()))
                yield BatchResult(batch["position"][good], batch["embedding"][good], errors)
        finally:
            context.enable_progress_bars = bars
