"""Embedding throughput: ``cxrclip.evaluation.embed`` vs a bare open_clip forward of the same batches.

Ours (timed): ``embed_images`` from a memory-mapped uint8 cache (gather, device copy, normalisation,
forward, L2 norm) and ``embed_texts`` from strings (tokenisation, forward, L2 norm). Bare (timed):
``model.encode_image`` / ``model.encode_text`` under ``torch.inference_mode`` on already-normalised
float tensors / already-tokenised batches prepared outside the timed loop. Weights do not matter for
speed, so models are built with ``pretrained none``. One warm-up batch per path, then ``--repeats``
interleaved passes (ours, bare, ours, bare, ...); the median pass time is reported.

Results are merged into ``--out`` (JSON; one entry per model and device, re-runs replace it) and
rendered to the ``.md`` beside it. Example::

    python benchmarks/bench_embed.py --models cxrclip-tiny --n-images 512 --n-texts 2000
    python benchmarks/bench_embed.py --models ViT-B-32 --n-images 256 --n-texts 512
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
KAGGLE_REPORTS = ROOT.parent / "shared" / "data" / "iuxray-kaggle-reports" / "indiana_reports.csv"
SYNTHETIC_SENTENCES = [
    "The heart size is normal.", "The lungs are clear.", "No pneumothorax or pleural effusion.",
    "Mild cardiomegaly.", "Degenerative changes of the thoracic spine.", "Small left pleural effusion.",
    "No focal airspace consolidation.", "Calcified granuloma in the right upper lobe.",
    "Stable postoperative changes of median sternotomy.", "Low lung volumes with bibasilar atelectasis.",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["cxrclip-tiny", "ViT-B-32"], help="open_clip model names")
    parser.add_argument("--n-images", type=int, default=512, help="images per pass")
    parser.add_argument("--n-texts", type=int, default=2000, help="texts per pass")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224, help="side of the synthetic uint8 cache (px)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per path (median reported)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--texts", choices=["auto", "real", "synthetic"], default="auto",
                        help="real: IU X-ray report texts from ../shared/data (read only); auto: real when present")
    parser.add_argument("--note", default="", help="free-text note stored with each result (e.g. machine load)")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmarks" / "embed.json")
    return parser.parse_args(argv)


def load_texts(n: int, source: str) -> tuple[list[str], str]:
    """``n`` report-like texts, cycling through the source; returns (texts, source used)."""
    if source in ("auto", "real") and KAGGLE_REPORTS.exists():
        import pandas as pd

        reports = pd.read_csv(KAGGLE_REPORTS)
        pool = (reports["impression"].fillna("") + " " + reports["findings"].fillna("")).str.strip()
        pool = [t for t in pool.tolist() if t]
        used = "iu-xray kaggle reports (impression + findings)"
    elif source == "real":
        raise SystemExit(f"--texts real: {KAGGLE_REPORTS} is absent")
    else:
        rng = np.random.default_rng(0)
        pool = [" ".join(rng.choice(SYNTHETIC_SENTENCES, size=rng.integers(2, 9))) for _ in range(1000)]
        used = "synthetic sentences"
    return [pool[i % len(pool)] for i in range(n)], used


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds over all threads) of ``fn()``; CUDA synchronised around it.

    CPU seconds barely change when other processes compete for the cores, so their ratio is a
    cross-check of the wall-clock ratio on a shared machine.
    """
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - start_cpu


def bench_model(name: str, args: argparse.Namespace, cache: np.ndarray, texts: list[str]) -> dict[str, Any]:
    from cxrclip.evaluation.embed import embed_images, embed_texts
    from cxrclip.models.factory import create_clip, normalize_images, resolve_device

    device = resolve_device(args.device)
    bundle = create_clip(name, "none", device)
    model = bundle.model.eval()
    bs = args.batch_size
    indices = np.random.default_rng(1).permutation(len(cache))
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    # Bare path inputs, prepared outside the timed loop: normalised float batches and token batches.
    image_batches = [
        normalize_images(torch.from_numpy(np.asarray(cache[np.sort(indices[i:i + bs])])).to(device),
                         bundle.mean, bundle.std, bundle.image_size)
        for i in range(0, len(indices), bs)
    ]
    token_batches = [bundle.tokenizer(texts[i:i + bs]).to(device) for i in range(0, len(texts), bs)]

    def bare_images() -> None:
        with torch.inference_mode(), autocast:
            for batch in image_batches:
                model.encode_image(batch)

    def bare_texts() -> None:
        with torch.inference_mode(), autocast:
            for batch in token_batches:
                model.encode_text(batch)

    def ours_images() -> None:
        embed_images(bundle, cache, indices, bs, device, progress=False)

    def ours_texts() -> None:
        embed_texts(bundle, texts, bs, device, progress=False)

    # Warm-up: one batch per path (allocator, kernels, tokenizer BPE cache of the first batch only).
    embed_images(bundle, cache, indices[:bs], bs, device, progress=False)
    embed_texts(bundle, texts[:bs], bs, device, progress=False)
    with torch.inference_mode(), autocast:
        model.encode_image(image_batches[0])
        model.encode_text(token_batches[0])

    paths = {"ours_images": ours_images, "bare_images": bare_images, "ours_texts": ours_texts, "bare_texts": bare_texts}
    times: dict[str, list[float]] = {key: [] for key in paths}
    cpu_times: dict[str, list[float]] = {key: [] for key in paths}
    load_before = os.getloadavg()
    for kind in ("images", "texts"):
        for _ in range(args.repeats):  # interleaved so that load changes hit both paths alike
            for key in (f"ours_{kind}", f"bare_{kind}"):
                wall, cpu = timed(paths[key], device)
                times[key].append(wall)
                cpu_times[key].append(cpu)
    load_after = os.getloadavg()

    median = {key: statistics.median(values) for key, values in times.items()}
    median_cpu = {key: statistics.median(values) for key, values in cpu_times.items()}
    result = {
        "model": name,
        "device": device.type,
        "n_parameters": bundle.info["n_parameters"],
        "n_images": len(indices),
        "n_texts": len(texts),
        "batch_size": bs,
        "repeats": args.repeats,
        "times_s": {key: [round(v, 4) for v in values] for key, values in times.items()},
        "cpu_times_s": {key: [round(v, 4) for v in values] for key, values in cpu_times.items()},
        "images_per_s": {"ours": len(indices) / median["ours_images"], "bare": len(indices) / median["bare_images"]},
        "texts_per_s": {"ours": len(texts) / median["ours_texts"], "bare": len(texts) / median["bare_texts"]},
        "loadavg_1m_before": round(load_before[0], 2),
        "loadavg_1m_after": round(load_after[0], 2),
    }
    result["ratio_images"] = result["images_per_s"]["ours"] / result["images_per_s"]["bare"]
    result["ratio_texts"] = result["texts_per_s"]["ours"] / result["texts_per_s"]["bare"]
    result["ratio_images_cpu_time"] = median_cpu["bare_images"] / median_cpu["ours_images"]
    result["ratio_images_best"] = min(times["bare_images"]) / min(times["ours_images"])
    result["ratio_texts_best"] = min(times["bare_texts"]) / min(times["ours_texts"])
    result["ratio_texts_cpu_time"] = median_cpu["bare_texts"] / median_cpu["ours_texts"]
    return result


def machine_facts(args: argparse.Namespace) -> dict[str, Any]:
    import open_clip

    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "platform": platform.platform(),
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": args.threads,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "numpy": np.__version__,
    }


def render_markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Embedding throughput: cxrclip vs bare open_clip forward",
        "",
        "Generated by `benchmarks/bench_embed.py` (see its `--help`). *Ours* includes cache gather, device",
        "copy, normalisation (images) or tokenisation (texts) and L2 normalisation; *bare* is",
        "`encode_image`/`encode_text` on inputs prepared outside the timed loop. Median of repeats.",
        "Target: ours/bare >= 0.9. Ratio = ours/bare throughput from median wall times; in brackets",
        "the same from median process CPU time, then from the fastest (least disturbed) pass: both",
        "cross-checks for when other jobs share the cores (see the load column).",
        "",
        "| model | device | images | ours img/s | bare img/s | ratio (cpu, best) | texts | ours txt/s | bare txt/s | ratio (cpu, best) | load 1m before/after | date (UTC) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['model']} | {r['device']} | {r['n_images']} | {r['images_per_s']['ours']:.1f} | "
            f"{r['images_per_s']['bare']:.1f} | {r['ratio_images']:.2f} ({r['ratio_images_cpu_time']:.2f}, {r['ratio_images_best']:.2f}) | "
            f"{r['n_texts']} | {r['texts_per_s']['ours']:.1f} | {r['texts_per_s']['bare']:.1f} | "
            f"{r['ratio_texts']:.2f} ({r['ratio_texts_cpu_time']:.2f}, {r['ratio_texts_best']:.2f}) | "
            f"{r['loadavg_1m_before']}/{r['loadavg_1m_after']} | {r['machine']['date_utc']} |"
        )
    lines += ["", "Machines:", ""]
    seen: set[str] = set()
    for r in report["results"]:
        m = r["machine"]
        text = (f"- {m['cpu']} ({m['logical_cpus']} logical CPUs, torch threads {m['torch_threads']}, "
                f"GPU {m['gpu']}); Python {m['python']}, torch {m['torch']}, open_clip {m['open_clip']}, "
                f"numpy {m['numpy']}; {m['platform']}")
        if text not in seen:
            seen.add(text)
            lines.append(text)
    notes = [r["note"] for r in report["results"] if r.get("note")]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    texts, text_source = load_texts(args.n_texts, args.texts)
    machine = machine_facts(args)
    with tempfile.TemporaryDirectory(prefix="bench_embed_") as tmp:
        path = Path(tmp) / "images.npy"
        pixels = np.random.default_rng(0).integers(0, 256, (args.n_images, args.image_size, args.image_size), dtype=np.uint8)
        np.save(path, pixels)
        cache = np.load(path, mmap_mode="r")
        results = []
        for name in args.models:
            print(f"[bench_embed] {name}: {args.n_images} images, {args.n_texts} texts ...", flush=True)
            result = bench_model(name, args, cache, texts)
            result.update(text_source=text_source, machine=machine, note=args.note)
            keys = ("model", "images_per_s", "texts_per_s", "ratio_images", "ratio_texts",
                    "ratio_images_cpu_time", "ratio_texts_cpu_time", "ratio_images_best", "ratio_texts_best",
                    "loadavg_1m_before", "loadavg_1m_after")
            print(json.dumps({k: result[k] for k in keys}), flush=True)
            results.append(result)
        del cache
    previous = json.loads(args.out.read_text())["results"] if args.out.exists() else []
    fresh = {(r["model"], r["device"]) for r in results}
    merged = [r for r in previous if (r["model"], r["device"]) not in fresh] + results
    report = {"benchmark": "embed", "results": merged}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(render_markdown(report))
    print(f"[bench_embed] wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
