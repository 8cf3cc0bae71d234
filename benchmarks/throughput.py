"""Throughput and peak memory of vitlm against the libraries its weights come from: same weights, one run.

Rows: ViT-B/16 at 224 (vitlm vs transformers' ViT with sdpa vs timm), the CLIP ViT-B/32 image and text towers (vitlm
vs open_clip), the R50+ViT-B/16 hybrid at 384 (vitlm vs timm), PiT-B at 224 (vitlm vs timm) and Swin-T at 224 (vitlm
vs transformers' Swin with sdpa vs timm). vitlm's models are converted from the timm and open_clip ones and exported
to transformers, so every contender computes the same function (checked before timing). CPU fp32 with batch 8 by
default, bf16 on a GPU when one is present. Contenders run in turn, round after round, and the median is reported,
so a drift of the machine's speed hits all of them alike. With `--variants` (on a CPU by default all three) vitlm also
runs compiled (`torch.compile(fullgraph=True)`; every library compiled the same way, default mode), int8
(`vitlm.quantize`) and as ONNX in onnxruntime (fp32 and int8); a second table gives vitlm's fastest path against the
fastest library's default one, and compiled against compiled. Peak memory is measured for each default contender in a
fresh process: the GPU allocator's peak, or on a CPU the resident-set growth during one forward pass.

    python benchmarks/throughput.py [--rounds 10] [--batch-size 8] [--device cpu|cuda] [--variants ...]

Prints a markdown table and writes benchmarks/results/throughput.json.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from datetime import date
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

RESULTS = Path(__file__).resolve().parent / "results"
ROWS = {
    "ViT-B/16 @224": ("vit", ["vitlm", "transformers", "timm"]),
    "CLIP ViT-B/32 image tower": ("clip_image", ["vitlm", "open_clip"]),
    "CLIP ViT-B/32 text tower": ("clip_text", ["vitlm", "open_clip"]),
    "R50+ViT-B/16 hybrid @384": ("hybrid", ["vitlm", "timm"]),
    "PiT-B @224": ("pit", ["vitlm", "timm"]),
    "Swin-T @224": ("swin", ["vitlm", "transformers", "timm"]),
}
ROWS_BY_KEY = {key: contenders for key, contenders in ROWS.values()}
# glibc keeps freed heap memory for reuse, hiding it from the resident set; a fixed mmap threshold makes every large
# block its own mapping, returned on free, so the resident set follows the live tensors
MEMORY_WORKER_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def build_row(row: str, batch_size: int, device: str, dtype: torch.dtype, variants=()):
    """{contender: a no-argument callable running one batch}, built from one set of weights, checked equal, and the
    largest difference from vitlm. `variants` adds, for vitlm, "compiled" (`torch.compile`, also for every other
    contender), "int8" (`vitlm.quantize`) and "onnx" (onnxruntime, with "onnx int8"), labelled by suffix."""
    import open_clip
    import timm

    from vitlm.convert import from_open_clip, from_timm
    from vitlm.convert.to_transformers import to_swin_model, to_vit_model

    torch.manual_seed(0)
    # contender: (module, forward(module) -> output tensor)
    if row in ("vit", "hybrid", "pit", "swin"):
        name = {
            "vit": "vit_base_patch16_224",
            "hybrid": "vit_base_r50_s16_384",
            "pit": "pit_b_224",
            "swin": "swin_tiny_patch4_window7_224",
        }[row]
        source = timm.create_model(name, pretrained=False).eval()
        ours = from_timm.convert_model(source, from_timm.vitlm_config(source, f"timm:{name}"), f"timm:{name}")
        ours.set_attn_implementation("sdpa")
        models = {"vitlm": ours, "timm": source}
        if row in ("vit", "swin"):
            models["transformers"] = (to_vit_model if row == "vit" else to_swin_model)(ours)
            models["transformers"].set_attn_implementation("sdpa")
        size = source.pretrained_cfg["input_size"][-1]
        inputs = {"pixel_values": torch.randn(batch_size, 3, size, size, device=device, dtype=dtype)}
        models = {k: m.to(device, dtype).eval() for k, m in models.items()}
        runs = {
            "vitlm": (models["vitlm"], lambda model: model(inputs["pixel_values"]).logits),
            "timm": (models["timm"], lambda model: model(inputs["pixel_values"])),
        }
        if "transformers" in models:
            runs["transformers"] = (models["transformers"], lambda model: model(inputs["pixel_values"]).logits)
    else:
        source, _, _ = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
        tokenizer = open_clip.get_tokenizer("ViT-B-32")
        ours = from_open_clip.convert_model(source, tokenizer).model
        ours.set_attn_implementation("sdpa")
        source, ours = source.to(device, dtype).eval(), ours.to(device, dtype).eval()
        if row == "clip_image":
            inputs = {"pixel_values": torch.randn(batch_size, 3, 224, 224, device=device, dtype=dtype)}
            runs = {
                "vitlm": (ours, lambda model: model.get_image_features(inputs["pixel_values"]).pooler_output),
                "open_clip": (source, lambda model: model.encode_image(inputs["pixel_values"])),
            }
        else:
            things = ["cat", "dog", "red car", "bowl of soup", "mountain at dawn", "city street", "bird", "chair"]
            input_ids = tokenizer([f"a photo of a {things[i % len(things)]}." for i in range(batch_size)]).to(device)
            # open_clip pads with 0 after the end-of-text token
            inputs = {"input_ids": input_ids, "attention_mask": (input_ids != 0).long()}
            runs = {
                "vitlm": (ours, lambda model: model.get_text_features(inputs["input_ids"]).pooler_output),
                "open_clip": (source, lambda model: model.encode_text(inputs["input_ids"])),
            }
    calls = {name: partial(forward, module) for name, (module, forward) in runs.items()}
    calls.update(variant_calls(row, runs, inputs, variants))
    with torch.inference_mode():
        outputs = {name: call().float() for name, call in calls.items()}
    differences = {name: (out - outputs["vitlm"]).abs().max().item() for name, out in outputs.items()}
    # int8 changes the numbers by design (its accuracy is measured by tests/deploy); ONNX graphs embed normalized
    # embeddings for the dual encoder's towers, and export checks them against PyTorch itself
    exact = {name: value for name, value in differences.items() if not name.endswith(("int8", "ONNX"))}
    max_diff = max(exact.values())
    tolerance = 1e-3 if dtype == torch.float32 else 0.25  # fp32: parity; bf16: rounding of one-hot-ish logits
    if max_diff > tolerance:
        raise RuntimeError(f"{row}: the contenders disagree (max abs diff {max_diff:.2e}): not the same function")
    return calls, max_diff


def variant_calls(row: str, runs: dict, inputs: dict, variants) -> dict:
    """The calls `build_row`'s `variants` add (see there)."""
    calls = {}
    if "compiled" in variants:
        # every row's forwards share their code objects, so dynamo would take the next row's new input size for a
        # dynamic dimension and recompile everything symbolically (the hybrid @384 after ViT-B @224: > 25 min)
        torch._dynamo.reset()
        for name, (module, forward) in runs.items():
            calls[f"{name} compiled"] = torch.compile(partial(forward, module), fullgraph=name == "vitlm")
    vitlm_model, vitlm_forward = runs["vitlm"]
    if "int8" in variants:
        from vitlm import quantize

        calls["vitlm int8"] = partial(vitlm_forward, quantize(vitlm_model))
    for int8 in [False, True] if "onnx" in variants else []:
        calls["vitlm ONNX int8" if int8 else "vitlm ONNX"] = onnx_call(row, vitlm_model, inputs, int8)
    return calls


def onnx_call(row: str, model, inputs: dict, int8: bool):
    """A call running `model`'s ONNX graph for `row` (the dual encoder's image or text encoder) in onnxruntime with
    as many threads as torch."""
    import tempfile

    import onnxruntime

    from vitlm.deploy.onnx import export_graph, graphs_for

    graphs = {graph.name: graph for graph in graphs_for(model)}
    graph = graphs["text_encoder" if row == "clip_text" else "image_encoder" if row == "clip_image" else "model"]
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{graph.name}.onnx"
        export_graph(model, graph, path, int8=int8)
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {name: inputs[name].cpu().numpy() for name in graph.inputs}
    return lambda: torch.from_numpy(session.run(None, feed)[0])


def synchronize(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


def time_row(calls: dict, rounds: int, batch_size: int, device: str, progress) -> tuple[dict, dict]:
    """Median items per second of each contender over `rounds` interleaved rounds (after two warm-ups), and the
    speed ratio vitlm / contender as the median of the rounds' own ratios, which a drifting machine disturbs least."""
    seconds = {name: [] for name in calls}
    with torch.inference_mode():
        for round_index in range(rounds + 2):
            for name, call in calls.items():
                synchronize(device)
                start = time.perf_counter()
                call()
                synchronize(device)
                if round_index >= 2:
                    seconds[name].append(time.perf_counter() - start)
            progress.update(1)
    speeds = {name: batch_size / statistics.median(times) for name, times in seconds.items()}
    ratios = {
        name: statistics.median(theirs / ours for theirs, ours in zip(times, seconds["vitlm"]))
        for name, times in seconds.items()
        if name != "vitlm"
    }
    return speeds, ratios


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory(row: str, contender: str, batch_size: int, device: str, dtype: torch.dtype) -> float:
    """MiB of extra memory one forward pass of `contender` needs at its peak (run in this fresh process)."""
    calls, _ = build_row(row, batch_size, device, dtype)
    call = calls[contender]
    with torch.inference_mode():
        if device == "cuda":
            call()  # warm-up: lazy initialization, then the allocator's peak over one pass
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            baseline = torch.cuda.memory_allocated()
            call()
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() - baseline) / 2**20
        # on a CPU: the resident set's growth over the first pass (see MEMORY_WORKER_ENV)
        baseline, peak, running = resident_bytes(), [0], [True]

        def sample():
            while running[0]:
                peak[0] = max(peak[0], resident_bytes())
                time.sleep(0.0005)

        sampler = threading.Thread(target=sample)
        sampler.start()
        call()
        running[0] = False
        sampler.join()
        return max(peak[0] - baseline, 0) / 2**20


def markdown(results: dict, device_name: str) -> str:
    lines = [
        f"| model ({device_name}) | contender | items/s | speed vitlm / this (paired median) | peak extra MiB |",
        "|---|---|---:|---:|---:|",
    ]
    for row, result in results.items():
        for contender, speed in result["throughput"].items():
            ratio = "—" if contender == "vitlm" else f"{result['speed_ratio_vitlm_over'][contender]:.2f}x"
            memory = result["peak_memory_mib"].get(contender)  # measured for the default paths
            memory = "—" if memory is None else f"{memory:.0f}"
            lines.append(f"| {row} | {contender} | {speed:.2f} | {ratio} | {memory} |")
    lines += [
        "",
        "| model | vitlm's fastest path | its speed / fastest library default | vitlm compiled / fastest compiled |",
        "|---|---|---:|---:|",
    ]
    for row, result in results.items():
        summary = result["summary"]
        compiled = summary.get("compiled_vitlm_over_fastest_compiled_library")
        lines.append(
            f"| {row} | {summary['fastest_vitlm_path']} | {summary['fastest_vitlm_over_fastest_library']:.2f}x | "
            + ("—" if compiled is None else f"{compiled:.2f}x")
            + " |"
        )
    return "\n".join(lines)


def summarize(speeds: dict) -> dict:
    """vitlm's fastest path (any variant) against the fastest library's default path, and compiled against
    compiled, from the median speeds."""
    libraries = {name: speed for name, speed in speeds.items() if not name.startswith("vitlm") and " " not in name}
    ours = {name: speed for name, speed in speeds.items() if name.startswith("vitlm")}
    best = max(ours, key=ours.get)
    summary = {"fastest_vitlm_path": best, "fastest_vitlm_over_fastest_library": ours[best] / max(libraries.values())}
    compiled = [speed for name, speed in speeds.items() if name.endswith(" compiled") and not name.startswith("vitlm")]
    if "vitlm compiled" in speeds and compiled:
        summary["compiled_vitlm_over_fastest_compiled_library"] = speeds["vitlm compiled"] / max(compiled)
    return summary


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=None, help="default: 8 on a CPU, 64 on a GPU")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rows", nargs="*", choices=sorted(ROWS_BY_KEY), default=list(ROWS_BY_KEY))
    parser.add_argument(
        "--variants",
        nargs="*",
        choices=["compiled", "int8", "onnx"],
        default=None,
        help="vitlm's deployment paths to time too (default: all three on a CPU, compiled on a GPU; none: --variants)",
    )
    parser.add_argument(
        "--output", default="throughput.json", help="the JSON file's name under benchmarks/results/ (a partial run's)"
    )
    parser.add_argument("--memory-worker", nargs=2, metavar=("ROW", "CONTENDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variants is None:
        args.variants = ["compiled", "int8", "onnx"] if args.device == "cpu" else ["compiled"]
    if args.device == "cuda" and {"int8", "onnx"} & set(args.variants):
        parser.error("int8 and onnx are CPU paths")
    batch_size = args.batch_size or (8 if args.device == "cpu" else 64)
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16

    if args.memory_worker:
        print(json.dumps(peak_memory(*args.memory_worker, batch_size, args.device, dtype)))
        return

    results = {}
    names = {key: row for row, (key, _) in ROWS.items()}
    progress = tqdm(total=sum((args.rounds + 2) for _ in args.rows), desc="timing", unit="round")
    for key in args.rows:
        calls, max_diff = build_row(key, batch_size, args.device, dtype, args.variants)
        speeds, ratios = time_row(calls, args.rounds, batch_size, args.device, progress)
        results[names[key]] = {"throughput": speeds, "speed_ratio_vitlm_over": ratios, "summary": summarize(speeds)}
        results[names[key]]["max_abs_diff_vs_vitlm"] = max_diff
    progress.close()
    for key in tqdm(args.rows, desc="peak memory", unit="row"):
        memory = {}
        for contender in ROWS_BY_KEY[key]:
            command = [sys.executable, __file__, "--memory-worker", key, contender, "--device", args.device]
            command += ["--batch-size", str(batch_size)]
            output = subprocess.run(command, check=True, capture_output=True, text=True, env=MEMORY_WORKER_ENV).stdout
            memory[contender] = json.loads(output.strip().splitlines()[-1])
        results[names[key]]["peak_memory_mib"] = memory

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"{platform.processor() or 'CPU'}"
    cores = os.cpu_count()
    header = (
        f"{date.today()}, {device_name} ({cores} cores), torch {torch.__version__}, "
        f"{'bf16' if args.device == 'cuda' else 'fp32'}, batch {batch_size}, median of {args.rounds} rounds, "
        f"{torch.get_num_threads()} threads (torch and onnxruntime), variants: {', '.join(args.variants) or 'none'}"
    )
    table = markdown(results, args.device)
    print(header)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / args.output).write_text(
        json.dumps({"setup": header, "batch_size": batch_size, "device": args.device, "rows": results}, indent=2)
    )


if __name__ == "__main__":
    main()
