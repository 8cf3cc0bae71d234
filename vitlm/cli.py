"""The `vitlm` command: one entry point, one subcommand per job.

Each subcommand is a `(name, help, add_arguments, run)` entry in `SUBCOMMANDS`; `run(args)` returns an exit status
(or None for 0). This module and the few it needs before a subcommand runs (`_vitlm_cli.LIGHT_MODULES`) import only
the standard library at module level, and every other import happens inside `run`: the `vitlm` console script loads
them without the `vitlm` package, whose import registers the models with transformers (seconds of torch), so that help,
`vitlm presets` and argument errors come back at once.
"""

import argparse
import shlex
import signal
import sys
import unicodedata


def _add_presets_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("names", nargs="*", help="presets to list (default: all)")


def _run_presets(args) -> int:
    from .presets import preset_names, preset_summary

    rows = []
    for name in args.names or preset_names():
        summary = preset_summary(name)
        size = summary["image_size"]
        rows.append(
            [
                name,
                summary["model_type"],
                size if isinstance(size, int) else "x".join(map(str, size)),
                # hybrids cut the backbone's feature map: report the input pixels per patch side
                summary["stem_stride"],
                summary["hidden_size"],
                summary["num_hidden_layers"],
                summary["num_attention_heads"],
                f"{summary['num_parameters']:,}",
            ]
        )
    header = ["preset", "family", "image size", "patch", "hidden", "layers", "heads", "parameters"]
    print(markdown_table(header, rows))
    return 0


def _add_convert_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("source", help="open_clip:<name>[/<tag>], hf:<repo id or folder> or timm:<name>[.<tag>]")
    parser.add_argument("out_dir", help="folder to write (config, safetensors weights, processor files)")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="cast the weights before saving")
    parser.add_argument(
        "--checkpoint", help="a local weights file for the source library to load instead of downloading"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing out_dir (atomically)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload the folder to this Hub repo")
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="build the architecture with random weights (open_clip:<name>, timm:<name>); its card says so",
    )


def _run_convert(args) -> int:
    from .convert import convert

    out_dir = convert(
        args.source,
        args.out_dir,
        dtype=args.dtype,
        checkpoint=args.checkpoint,
        overwrite=args.overwrite,
        push_to_hub=args.push_to_hub,
        random_weights=args.random_weights,
    )
    print(f"wrote {out_dir}" + (f" and pushed it to {args.push_to_hub}" if args.push_to_hub else ""))
    return 0


def _add_export_arguments(parser: argparse.ArgumentParser):
    parser.add_argument(
        "folder", help="a vitlm model folder (dual encoder, ViT, Swin, or their classifiers; any with --onnx)"
    )
    parser.add_argument(
        "out_dir",
        help="folder to write the transformers CLIP / ViT / Swin model and processor to (with --onnx: the ONNX "
        "graphs, config and processor files)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing out_dir (atomically)")
    parser.add_argument(
        "--onnx",
        action="store_true",
        help="export ONNX graphs instead (dual encoder: image and text encoders; classifiers, the zero-shot "
        "classifier, the detector, towers: model.onnx), checked with onnxruntime against PyTorch",
    )
    parser.add_argument("--int8", action="store_true", help="with --onnx: int8 weights in the linear layers")


def _run_export(args) -> int:
    if args.int8 and not args.onnx:
        raise ValueError("--int8 quantizes ONNX graphs: add --onnx (in Python, `vitlm.quantize(model)`)")
    if args.onnx:
        from .deploy.onnx import export_onnx

        report = export_onnx(args.folder, args.out_dir, int8=args.int8, overwrite=args.overwrite)
        for name, difference in report.items():
            print(f"wrote {args.out_dir}/{name} (onnxruntime vs PyTorch: max abs difference {difference:.1e})")
        return 0
    from .convert.to_transformers import export

    print(f"wrote {export(args.folder, args.out_dir, overwrite=args.overwrite)}")
    return 0


def _weights(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _add_train_arguments(parser: argparse.ArgumentParser):
    from .training.tasks import ALIASES, TASKS  # the task table's names only: imports nothing heavy

    aliases = ", ".join(f"{alias} = {name}" for alias, name in ALIASES.items())
    parser.add_argument(
        "task",
        choices=[*TASKS, *ALIASES],
        metavar="task",
        help=f"one of {', '.join(TASKS)} (the short names of earlier versions still work: {aliases})",
    )
    parser.add_argument("--model", required=True, help="a preset (random weights), folder, Hub id or timm:/hf:/...")
    parser.add_argument("--dataset", required=True, help="a Hub id, an image folder, or 'shapes' (generated)")
    parser.add_argument("--output-dir", default="vitlm-trained", help="checkpoints, then the final model folder")
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (overrides epochs)")
    parser.add_argument("--batch-size", type=int, default=32, help="per device")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--eval-steps", type=int, help="evaluate and checkpoint every N steps (default: per epoch)")
    parser.add_argument("--logging-steps", type=int, default=10)
    parser.add_argument("--layer-decay", type=float, help="layer-wise learning-rate decay, e.g. 0.75")
    parser.add_argument("--mixup", type=float, default=0.0, help="mixup alpha (image-classification)")
    parser.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha (image-classification)")
    parser.add_argument(
        "--no-augment", action="store_true", help="train on unaugmented images (crops and colour jitter)"
    )
    parser.add_argument(
        "--block-masking",
        action="store_true",
        help="masked-image-modeling: half the images masked in blobs, not scattered patches",
    )
    parser.add_argument(
        "--head",
        help="masked-image-modeling: the head, 'mae' (reconstruction, the default) or 'synthesis' (generative "
        "inpainting, MaskGIT-style sampling)",
    )
    parser.add_argument(
        "--bbox-format",
        choices=["xyxy", "xywh"],
        default="xyxy",
        help="zero-shot-object-detection: the dataset's boxes (pixels)",
    )
    parser.add_argument("--config-overrides", help="comma-separated key=value model config changes")
    parser.add_argument(
        "--recipe-settings",
        help="self-distillation and masked-token-prediction: comma-separated key=value recipe changes, e.g. "
        "teacher_momentum=0.99,out_dim=256,local_crop_scale=[0.2,0.5] (DINO) or mask_ratio=0.5 (BEiT); the fields "
        "of DinoSettings / BeitSettings in vitlm.training.self_supervised",
    )
    parser.add_argument("--shapes-train", type=int, default=512, help="generated training images (--dataset shapes)")
    parser.add_argument(
        "--shapes-test",
        type=int,
        default=128,
        help="generated evaluation images (--dataset shapes): unseen images of the classes trained on for "
        "image-classification, images of held-out shape x colour pairs (zero-shot) for the other tasks",
    )
    parser.add_argument("--shapes-size", type=int, default=64, help="generated image side (--dataset shapes)")
    parser.add_argument(
        "--shapes-max-objects", type=int, default=3, help="objects per generated image, 1 to this (--dataset shapes)"
    )
    parser.add_argument(
        "--caption-weights",
        type=_weights,
        help="zero-shot-image-classification: weights of each image's captions when one is drawn, e.g. 0,1,0 "
        "(default: uniform)",
    )
    parser.add_argument(
        "--twin-weight",
        type=float,
        default=0.0,
        help="zero-shot-image-classification: weight of the twin consistency loss (data with twins; shapes generates "
        "them), e.g. 10",
    )
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output-dir")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace what --output-dir holds (refused without it, or --resume)"
    )
    parser.add_argument("--no-checkpoints", action="store_true", help="save only the final model (no resuming)")
    parser.add_argument("--save-dtype", choices=["float32", "float16", "bfloat16"], help="cast the final weights")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the final folder to this Hub repo")
    parser.add_argument(
        "--lora",
        type=int,
        metavar="R",
        help="train rank-R LoRA adapters (PEFT) and the task head, the rest frozen; the folder holds the adapters",
    )
    parser.add_argument(
        "--lora-targets",
        type=lambda text: [name.strip() for name in text.split(",")],
        help="with --lora: comma-separated layer names to adapt (default: qkv,fc1,fc2; also proj)",
    )
    parser.add_argument("--merge-lora", action="store_true", help="with --lora: save the model with adapters merged")


def _run_train(args) -> int:
    from .training.arguments import check_arguments  # standard library only: refuses bad settings at once

    task_options = dict(
        mixup_alpha=args.mixup,
        cutmix_alpha=args.cutmix,
        block_masking=args.block_masking,
        head=args.head,
        caption_weights=args.caption_weights,
        bbox_format=args.bbox_format,
        recipe_settings=args.recipe_settings,
    )
    settings = dict(
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        eval_steps=args.eval_steps,
        logging_steps=args.logging_steps,
        layer_decay=args.layer_decay,
        twin_weight=args.twin_weight,
        lora_rank=args.lora,
        lora_targets=args.lora_targets,
        merge_lora=args.merge_lora,
    )
    check_arguments(
        args.task,
        args.output_dir,
        **settings,
        resume=args.resume,
        overwrite=args.overwrite,
        reads=(args.model, args.dataset),
        **task_options,
    )

    from accelerate import PartialState

    from .training.run import train

    trainer = train(
        args.task,
        args.model,
        args.dataset,
        args.output_dir,
        resume=args.resume,
        overwrite=args.overwrite,
        push_to_hub=args.push_to_hub,
        shapes_train=args.shapes_train,
        shapes_test=args.shapes_test,
        shapes_size=args.shapes_size,
        shapes_max_objects=args.shapes_max_objects,
        config_overrides=args.config_overrides,
        augment=not args.no_augment,
        save_checkpoints=not args.no_checkpoints,
        save_dtype=args.save_dtype,
        command=shlex.join(["vitlm", *args.argv]),
        **settings,
        **task_options,
    )
    print(f"wrote {args.output_dir} ({trainer.state.global_step} steps)")
    # under torchrun / accelerate on CPU, a process that exits with gloo's threads still running can abort
    # (SIGABRT) and fail the whole launch after the work is done
    PartialState().destroy_process_group()
    return 0


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 0 to 65535, got {text!r}")
    return port


def _add_demo_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every network interface)")
    parser.add_argument("--port", type=_port, default=7860)
    parser.add_argument("--share", action="store_true", help="also serve through a temporary public gradio.live link")
    parser.add_argument(
        "--allow-local-models",
        action="store_true",
        help="let the model boxes load folders and files of this machine even when the demo serves other machines "
        "(--share, or a --host other than 127.0.0.1): anyone who reaches the demo can then read them",
    )


def _run_demo(args) -> int:
    # importing torch, transformers and gradio takes seconds before the demo's own progress lines
    print("vitlm demo: starting (importing torch, transformers and gradio)...", file=sys.stderr, flush=True)
    try:
        from .demo import launch
    except ModuleNotFoundError as error:
        if error.name != "gradio":
            raise
        print("vitlm demo: error: the demo needs gradio; install it with: pip install 'vitlm[demo]'", file=sys.stderr)
        return 2
    launch(host=args.host, port=args.port, share=args.share, allow_local_models=args.allow_local_models)
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _add_embed_arguments(parser: argparse.ArgumentParser):
    parser.add_argument(
        "source", help="a folder of images (recursive), a datasets data set (saved folder or Hub id) or parquet files"
    )
    parser.add_argument("--out", required=True, help="folder for the shards, index and manifest (rerun to resume)")
    parser.add_argument("--model", default="default", help="a dual encoder: default, a folder, a Hub id or hf:/...")
    parser.add_argument("--engine", choices=["local", "ray"], default="local", help="this process, or Ray Data")
    parser.add_argument("--address", help="--engine ray: the Ray cluster to attach to (default: start one here)")
    parser.add_argument("--num-cpus", type=_positive_int, help="--engine ray: CPUs of the local Ray runtime")
    parser.add_argument("--num-actors", type=_positive_int, default=1, help="--engine ray: model replicas")
    parser.add_argument(
        "--gpus-per-actor", type=float, help="--engine ray: GPUs per model replica (0.5: two replicas per GPU)"
    )
    parser.add_argument("--batch-size", type=_positive_int, default=256, help="images per model call")
    parser.add_argument("--shard-size", type=_positive_int, default=4096, help="images per output shard")
    parser.add_argument("--num-workers", type=int, help="DataLoader decoding processes (default: CPUs, at most 8)")
    parser.add_argument(
        "--index", choices=["auto", "exact", "hnsw", "ivf"], default="auto", help="auto: exact up to 100,000 images"
    )
    parser.add_argument("--kind", choices=["auto", "folder", "dataset", "parquet"], default="auto")
    parser.add_argument("--image-column", default="image", help="datasets / parquet: the column of images")
    parser.add_argument("--id-column", help="datasets / parquet: a column of unique ids (default: row numbers)")
    parser.add_argument("--split", default="train", help="datasets: the split")
    parser.add_argument(
        "--captions",
        metavar="COLUMN",
        help="datasets / parquet: a text column whose captions the text tower embeds too (a folder: the suffix of "
        "caption files beside the images, e.g. txt for cat.jpg -> cat.txt)",
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: the GPU when there is one)")


def _run_embed(args) -> int:
    from .retrieval.checks import check_caption_column, check_engine

    check_engine(args.engine)
    check_caption_column(args.captions)
    from .retrieval import embed
    from .retrieval.store import read_manifest

    out = embed(
        args.source,
        args.out,
        model=args.model,
        engine=args.engine,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        index=args.index,
        num_workers=args.num_workers,
        device=args.device,
        kind=args.kind,
        image_column=args.image_column,
        id_column=args.id_column,
        split=args.split,
        address=args.address,
        num_cpus=args.num_cpus,
        num_actors=args.num_actors,
        gpus_per_actor=args.gpus_per_actor,
        captions=args.captions,
    )
    manifest = read_manifest(out)
    counts, index = manifest["counts"], manifest["index"]
    recall = f", recall@10 against exact search {index['recall_at_10']:.3f}" if "recall_at_10" in index else ""
    captions = f", {manifest['captions']['embedded']:,} captions embedded" if "captions" in manifest else ""
    print(
        f"wrote {out}: {counts['embedded']:,} of {counts['items']:,} images embedded ({counts['errors']:,} could not "
        f"be decoded, listed in {out / manifest['errors_file']}), {index['kind']} index{recall}{captions}"
    )
    return 0


def _add_search_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("index", help="a folder written by `vitlm embed`")
    parser.add_argument("text", nargs="?", help="the query text")
    parser.add_argument("--image", help="a query image (with a text too: both count)")
    parser.add_argument("-k", type=_positive_int, default=10, help="how many images to list")
    parser.add_argument(
        "--captions", action="store_true", help="search the captions' embeddings (an index embedded with --captions)"
    )
    parser.add_argument("--device", help="cpu, cuda, ... (default: the GPU when there is one)")


def _run_search(args) -> int:
    from .retrieval.checks import check_k, check_text

    if args.text is None and args.image is None:
        raise ValueError("give a query text, --image or both")
    if args.text is not None:
        check_text(args.text)
    check_k(args.k)
    from .retrieval import search

    hits = search(args.index, args.text, args.image, k=args.k, device=args.device, captions=args.captions)
    print(markdown_table(["rank", "score", "image"], [[h.rank, f"{h.score:.4f}", h.path or h.id] for h in hits]))
    return 0


def _add_classify_folder_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("folder", help="a folder of images (recursive)")
    parser.add_argument("--labels", required=True, help="comma-separated class names")
    parser.add_argument("--out", required=True, help="the CSV to write: path,label,probability,error")
    parser.add_argument("--model", default="default", help="a dual encoder: default, a folder, a Hub id or hf:/...")
    parser.add_argument(
        "--template",
        action="append",
        help="a prompt template with {} for the label (repeatable; default: the model's)",
    )
    parser.add_argument("--batch-size", type=_positive_int, default=256)
    parser.add_argument("--num-workers", type=int, help="DataLoader decoding processes (default: CPUs, at most 8)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: the GPU when there is one)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def _run_classify_folder(args) -> int:
    from .retrieval.checks import check_text

    labels = [check_text(label, "a label") for label in args.labels.split(",") if label.strip()]
    if not labels:
        raise ValueError("--labels names no class: give comma-separated names")
    from .retrieval import classify_folder

    out = classify_folder(
        args.folder,
        labels,
        args.out,
        model=args.model,
        templates=args.template,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
        overwrite=args.overwrite,
    )
    print(f"wrote {out}")
    return 0


SUBCOMMANDS = [
    (
        "presets",
        "list the architectures in hub_configs/ (vision tower's shape; parameters of the published model)",
        _add_presets_arguments,
        _run_presets,
    ),
    (
        "convert",
        "convert pretrained weights from open_clip, transformers or timm into a vitlm model folder",
        _add_convert_arguments,
        _run_convert,
    ),
    (
        "export",
        "export a vitlm model to transformers' own classes (CLIPModel, ViTModel, ViTForImageClassification) or, with "
        "--onnx, to ONNX",
        _add_export_arguments,
        _run_export,
    ),
    (
        "train",
        "train a classifier, dual encoder, open-vocabulary detector, segmenter or inpainting model, or pretrain a "
        "ViT without labels (DINO, BEiT), with transformers' Trainer",
        _add_train_arguments,
        _run_train,
    ),
    (
        "demo",
        "serve the Gradio demo: zero-shot classification, open-vocabulary detection, segmentation, inpainting and "
        "search",
        _add_demo_arguments,
        _run_demo,
    ),
    (
        "embed",
        "embed a collection of images (folder, datasets data set, parquet) into shards and a search index",
        _add_embed_arguments,
        _run_embed,
    ),
    (
        "search",
        "search an index written by `vitlm embed` by text or by example image",
        _add_search_arguments,
        _run_search,
    ),
    (
        "classify-folder",
        "label every image of a folder with the zero-shot classifier, into a CSV",
        _add_classify_folder_arguments,
        _run_classify_folder,
    ),
]


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A markdown table; columns whose every cell starts with a digit are right-aligned. File names are the user's
    data: control and format characters in a cell (a terminal's escape sequences, newlines, bidi overrides) are
    printed as Python escapes and `|` as `\\|`, so no cell can drive the terminal or break the table."""
    cells = [[table_text(value) for value in row] for row in rows]
    columns = list(zip(*cells, strict=True)) or [() for _ in header]
    widths = [max([len(title), *map(len, column)]) for title, column in zip(header, columns, strict=True)]
    numeric = [bool(column) and all(cell[:1].isdigit() for cell in column) for column in columns]

    def line(values):
        aligned = [v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric, strict=True)]
        return "| " + " | ".join(aligned) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" if n else "-" * (w + 2) for w, n in zip(widths, numeric, strict=True))
    return "\n".join([line(header), rule + "|", *(line(row) for row in cells)])


def table_text(value) -> str:
    text = "".join(ascii(c)[1:-1] if unicodedata.category(c)[0] == "C" else c for c in str(value))
    return text.replace("|", "\\|")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitlm", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text, add_arguments, run in SUBCOMMANDS:
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        add_arguments(subparser)
        subparser.set_defaults(run=run)
    return parser


def hub_error_message(error: BaseException | None) -> str | None:
    """One line for a request the Hub refused, found anywhere in `error`'s chain (transformers and datasets wrap
    huggingface_hub's errors in their own, whose messages carry status lines, URLs and links); None otherwise."""
    hub_errors = sys.modules.get("huggingface_hub.errors")
    if hub_errors is None:  # not loaded, so no error came from the Hub (and importing it would take a while)
        return None
    while error is not None and not isinstance(error, hub_errors.HfHubHTTPError):
        error = error.__cause__ or error.__context__
    if error is None:
        return None
    status, detail = error.response.status_code, error.server_message or error.response.reason_phrase
    login = "check HF_TOKEN or `hf auth login`"
    # the Hub answers the same for private repos without access
    if isinstance(error, hub_errors.RepositoryNotFoundError):
        return f"no repository {error.repo_id} on the Hub, or your token cannot read it ({login})"
    if status in (401, 403):
        return f"the Hub refused your token ({status}: {detail}); {login}"
    return f"the Hub answered {status}: {detail}"


def _exit_on_sigterm(signum, frame):
    # raised in the main thread, so `finally` blocks run: a convert removes its staging folder
    sys.exit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)  # as typed, for the model card's "Reproduce"
    if argv is None and args.command in ("convert", "export"):
        # the `vitlm` process itself (not a caller's `main([...])`), writing a folder: a SIGTERM cleans up as it exits
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        return args.run(args) or 0
    except (ValueError, OSError) as error:
        # bad input (an unknown preset, a missing file or repo, a refused token): one line, no traceback
        message = " ".join(str(hub_error_message(error) or error).split()) or type(error).__name__
        print(f"vitlm {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C: what was saved stays (a training run resumes from its last checkpoint with --resume)
        print(f"vitlm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
