"""The model card written next to a trained model: YAML front matter for the Hub (library, pipeline, tags, license,
base model, dataset, last evaluation as a model-index) and a body with the hyper-parameters, intended use and
limits."""

from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..convert import SOURCES, source_repo_id
from ..presets import preset_names
from .tasks import get_task

REPRODUCE = "## Reproduce"
HYPERPARAMETERS = (
    "learning_rate",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "max_steps",
    "lr_scheduler_type",
    "warmup_steps",
    "weight_decay",
    "optim",
    "bf16",
    "seed",
)


def last_evaluation(log_history: list[dict]) -> dict[str, float]:
    """The metrics of the last evaluation, without the `eval_` prefix and the timing entries."""
    for entry in reversed(log_history):
        if any(key.startswith("eval_") for key in entry):
            return {
                key.removeprefix("eval_"): value
                for key, value in entry.items()
                if key.startswith("eval_") and not key.endswith(("runtime", "per_second"))
            }
    return {}


def base_model(model_name: str) -> str | None:
    """The Hub repo the training started from: a Hub id, or a converter source naming one. None for presets (random
    weights) and local folders."""
    if model_name.partition(":")[0] in SOURCES:
        return source_repo_id(model_name)
    return None if model_name in preset_names() or Path(model_name).exists() else model_name


def base_commands(model_name: str) -> list[str]:
    """The commands that trained a local folder the training started from, read from its card's "Reproduce" block:
    with them first, a card reproduces a chain of runs (a run continued from another run's output) from scratch."""
    card = Path(model_name) / "README.md"
    if not card.is_file():
        return []
    _, found, rest = card.read_text(encoding="utf-8").partition(f"{REPRODUCE}\n\n```bash\n")
    return rest.partition("\n```")[0].splitlines() if found else []


def write_model_card(
    output_dir, task, model_name: str, dataset_name: str, trainer, command: str | None = None
) -> Path:
    """README.md with Hub metadata, the last evaluation, the recipe and, given the `command` that trained the model,
    how to reproduce it. `task`: a task name, alias or `TrainingTask` (the card says its name)."""
    output_dir = Path(output_dir)
    task = get_task(task)
    metrics = last_evaluation(trainer.state.log_history)
    from_scratch = model_name in preset_names()  # vitlm's own weights; otherwise they keep the source's license
    pipeline_tag = trainer.model.pipeline_tag  # the same tag save_pretrained's own card gets
    dataset_id = "vitlm-shapes" if dataset_name == "shapes" else dataset_name
    card_data = ModelCardData(
        library_name="vitlm",
        pipeline_tag=pipeline_tag,
        tags=["vitlm", "vision", trainer.model.config.model_type, task.name],
        license="apache-2.0" if from_scratch else None,
        base_model=base_model(model_name),
        datasets=[dataset_id],
        metrics=sorted(metrics),
        model_name=output_dir.name,
        eval_results=[
            EvalResult(
                task_type=pipeline_tag,
                dataset_type=dataset_id,
                dataset_name=dataset_id,
                metric_type=name,
                metric_value=float(value),
            )
            for name, value in sorted(metrics.items())
        ]
        or None,
    )
    args = trainer.args
    overridden = "num_train_epochs" if args.max_steps > 0 else "max_steps"  # Trainer stops on max_steps when set
    values = args.to_dict()  # enums by their values ("cosine", not SchedulerType.COSINE)
    rows = "\n".join(f"| {name} | {values[name]} |" for name in HYPERPARAMETERS if name != overridden)
    results = "\n".join(f"| {name} | {value:.4g} |" for name, value in sorted(metrics.items())) or "| - | - |"
    if from_scratch:
        license_text = "Apache-2.0, as vitlm: the model was trained from random weights."
    else:
        license_text = f"The weights derive from `{model_name}` and keep its license; check it before use."
    reproduce = ""
    if command:
        commands = "\n".join([*base_commands(model_name), command])
        reproduce = f"{REPRODUCE}\n\n```bash\n{commands}\n```\n\n"
    content = f"""---
{card_data.to_yaml()}
---

# {output_dir.name}

{sentence_start(task.description)}, trained with `vitlm train {task.name}` from `{model_name}` on `{dataset_name}`
({trainer.state.global_step} optimizer steps, {trainer.state.epoch or 0:.2f} epochs).

## Evaluation (last evaluation)

| metric | value |
| --- | --- |
{results}

## Training hyper-parameters

| name | value |
| --- | --- |
{rows}

{reproduce}## Intended use and limits

Load with `import vitlm` and the transformers Auto classes (or `trust_remote_code=True` without vitlm), with the
processor saved alongside. The model is only as general as its training data: evaluate it on your own images before
relying on it. Models trained on the synthetic shapes world recognise coloured shapes on plain backgrounds and are
meant for testing and teaching, not for natural images.

## License

{license_text}
"""
    card = ModelCard(content)
    card.save(output_dir / "README.md")
    return output_dir / "README.md"


__all__ = ["base_commands", "base_model", "last_evaluation", "write_model_card"]


def sentence_start(text: str) -> str:
    """`text` with its first letter upper-cased and the rest as written (`str.capitalize` lower-cases acronyms)."""
    return text[:1].upper() + text[1:]
