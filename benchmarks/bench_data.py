"""Data-stage benchmark: report parsing, image verification + 224 px cache, and the decode floor.

On Open-i-sized synthetic data (``cxrclip.data.synthetic.generate_openi``; full scale: 3,955
reports, ~7,470 PNGs, 2,048 px long side) it measures, each phase in a fresh Python process (so
peak RSS is per phase):

- ``read``: stream every PNG member out of the .tgz (gunzip + tar, one process; no decoding);
- ``parse``: ``cxrclip.data.reports.parse_openi_archive`` on the report archive;
- ``floor``: every image decoded once on all cores with PIL (``Image.open(...).load()`` only), fed
  from the same streamed bytes through the same bounded process pool as the real stage;
- ``verify``: ``cxrclip.data.images.verify_and_cache`` (full decode + CRC verify + grayscale +
  resize + memmap write + tables).

``floor`` and ``verify`` alternate ``--repeats`` times; medians are reported, with the ratio
verify / floor (target <= 1.25) in wall-clock seconds and in CPU seconds (user + system of the
phase process and its pool workers; on a machine shared with other jobs only the CPU ratio is
stable). Peak RSS comes from ``resource.getrusage`` (the phase process and, separately, the largest
of its pool workers). Results merge into ``--out`` (key ``full`` or
``quick``) and are rendered to the ``.md`` beside it. Example::

    python benchmarks/bench_data.py              # full scale (generation takes many minutes once)
    python benchmarks/bench_data.py --quick      # 300 reports at 1,024 px, CI smoke
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("read", "parse", "floor", "verify")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/cxrclip-bench"),
                        help="where generated archives and outputs go (reused across runs)")
    parser.add_argument("--quick", action="store_true", help="small run for CI: 300 reports, 1,024 px")
    parser.add_argument("--n-reports", type=int, default=None, help="default 3955 (300 with --quick)")
    parser.add_argument("--image-size", type=int, default=None, help="px, default 2048 (1024 with --quick)")
    parser.add_argument("--workers", type=int, default=0, help="processes, 0 = all cores")
    parser.add_argument("--repeats", type=int, default=None, help="floor/verify alternations (default 2; 1 quick)")
    parser.add_argument("--size", type=int, default=224, help="cache side (px)")
    parser.add_argument("--note", default="", help="free text stored with the result (e.g. machine load)")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmarks" / "data.json")
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)  # internal: run one phase
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.n_reports = args.n_reports or (300 if args.quick else 3955)
    args.image_size = args.image_size or (1024 if args.quick else 2048)
    args.repeats = args.repeats or (1 if args.quick else 2)
    return args


# ----------------------------------------------------------------------------------------------
# one phase, in its own process


def _load_only(data: bytes) -> tuple[int, int]:
    """Floor worker: decode fully, nothing else. Returns (width, height) px."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img.size


def _png_bytes(archive: Path):
    from cxrclip.data.archive import Member, iter_source

    for item in iter_source(archive, (".png",)):
        if isinstance(item, Member):
            yield item.data


def run_phase(phase: str, data_dir: Path, workers: int, size: int) -> dict[str, Any]:
    """Run ``phase`` on the archives in ``data_dir``; return seconds, counts and peak RSS (MiB)."""
    import pandas as pd
    import yaml
    from PIL import Image

    from cxrclip.data.images import ordered_parallel_map, resolve_workers, verify_and_cache
    from cxrclip.data.reports import parse_openi_archive

    baseline_mib = _rss_self_mib()
    load_before = os.getloadavg()[0]
    cpu_before = _cpu_seconds()
    started = time.perf_counter()
    info: dict[str, Any] = {}
    if phase == "read":
        sizes = [len(b) for b in _png_bytes(data_dir / "NLMCXR_png.tgz")]
        info = {"members": len(sizes), "png_bytes": sum(sizes)}
    elif phase == "parse":
        text_cfg = yaml.safe_load((ROOT / "params.yaml").read_text())["text"]
        reports, excl = parse_openi_archive(data_dir / "NLMCXR_reports.tgz", text_cfg, progress=False)
        reports.to_parquet(data_dir / "reports.parquet")
        info = {"reports": len(reports), "report_exclusions": len(excl)}
    elif phase == "floor":
        Image.MAX_IMAGE_PIXELS = None  # the floor does no checking at all
        n = sum(1 for _ in ordered_parallel_map(_load_only, _png_bytes(data_dir / "NLMCXR_png.tgz"),
                                                resolve_workers(workers)))
        info = {"decoded": n}
    elif phase == "verify":
        reports = pd.read_parquet(data_dir / "reports.parquet", columns=["report_id", "image_ids"])
        images, excl = verify_and_cache(data_dir / "NLMCXR_png.tgz", reports, data_dir / "images_224.npy",
                                        size=size, resize="shorter_side_center_crop",
                                        max_pixels=89478485, workers=workers, progress=False)
        info = {"images": len(images), "cached": int(images["ok"].sum()), "excluded": len(excl),
                "cache_mib": round((data_dir / "images_224.npy").stat().st_size / 2**20, 1)}
    seconds = time.perf_counter() - started
    cpu = _cpu_seconds() - cpu_before
    return {"phase": phase, "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), **info,
            "rss_baseline_mib": round(baseline_mib, 1), "peak_rss_mib": round(_rss_self_mib(), 1),
            "peak_rss_worker_mib": round(_rss_children_mib(), 1),
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its waited-for children (pool workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _rss_self_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _rss_children_mib() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def spawn_phase(phase: str, data_dir: Path, workers: int, size: int) -> dict[str, Any]:
    """Run one phase in a fresh interpreter and return its JSON result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--phase", phase, "--data-dir", str(data_dir),
           "--workers", str(workers), "--size", str(size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"phase {phase} failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  {phase:<6} {result['seconds']:8.2f} s  CPU {result['cpu_seconds']:8.2f} s  peak RSS {result['peak_rss_mib']:.0f} MiB "
          f"(workers {result['peak_rss_worker_mib']:.0f} MiB)  load {result['load_before']}->{result['load_after']}",
          flush=True)
    return result


# ----------------------------------------------------------------------------------------------
# orchestration


def ensure_data(work_dir: Path, n_reports: int, image_size: int, workers: int) -> tuple[Path, dict[str, Any]]:
    """Generate (once) the synthetic Open-i archives for these sizes; return their folder and manifest."""
    from cxrclip.data.synthetic import generate_openi

    data_dir = work_dir / f"openi_{n_reports}r_{image_size}px"
    manifest_path = data_dir / "manifest.json"
    if not manifest_path.exists():
        print(f"generating {n_reports} reports at {image_size} px into {data_dir} ...", flush=True)
        generate_openi(data_dir, n_reports=n_reports, image_size=image_size, faults=False, seed=0,
                       workers=workers, progress=True)
    return data_dir, json.loads(manifest_path.read_text())


def machine() -> dict[str, Any]:
    import numpy
    import PIL

    mem_kib = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                    if line.startswith("MemTotal:")), 0) if Path("/proc/meminfo").exists() else 0
    return {"cpu_count": os.cpu_count(), "ram_gib": round(mem_kib / 2**20, 1),
            "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
            "pillow": PIL.__version__, "numpy": numpy.__version__, "platform": platform.platform()}


def render_markdown(results: dict[str, Any]) -> str:
    lines = ["# Data-stage benchmark", "",
             "Produced by `python benchmarks/bench_data.py` (full) and `--quick`. Synthetic Open-i-format "
             "data from `cxrclip.data.synthetic`; each phase runs in a fresh process. `floor` = every image "
             "decoded once with PIL on all cores, nothing else; `verify` = `verify_and_cache` (decode, CRC "
             "verify, grayscale, resize to 224, memmap write). Times are medians of the repeats.", ""]
    for mode in ("full", "quick"):
        if mode not in results:
            continue
        r = results[mode]
        m = r["machine"]
        lines += [f"## {mode} ({r['n_reports']:,} reports, {r['n_images']:,} PNGs at {r['image_size']} px, "
                  f"{r['png_archive_mib']:,.0f} MiB archive)", "",
                  f"{r['date']} — {m['cpu_count']} cores, {m['ram_gib']} GiB RAM, Python {m['python']}, "
                  f"Pillow {m['pillow']}, workers {r['workers']}. {r.get('note', '')}".rstrip(), "",
                  "| phase | wall s (median) | wall s (runs) | CPU s (median) | images/s (wall) | peak RSS (MiB) "
                  "| largest worker RSS (MiB) | load avg before→after |",
                  "|---|---|---|---|---|---|---|---|"]
        for phase in PHASES:
            p = r["phases"][phase]
            rate = f"{r['n_images'] / p['seconds_median']:.1f}" if phase in ("floor", "verify", "read") else "–"
            lines.append(f"| {phase} | {p['seconds_median']:.2f} | {', '.join(f'{s:.1f}' for s in p['seconds'])} | "
                         f"{p['cpu_seconds_median']:.1f} | {rate} | {p['peak_rss_mib']:.0f} | "
                         f"{p['peak_rss_worker_mib']:.0f} | {p['load']} |")
        lines += ["", f"**verify / floor = {r['verify_over_floor_cpu']:.3f} in CPU seconds**, "
                  f"{r['verify_over_floor']:.3f} in wall-clock seconds (target ≤ 1.25); "
                  f"report parsing: {r['phases']['parse']['seconds_median']:.2f} s for {r['n_reports']:,} XML files; "
                  f"cache {r['cache_mib']:.0f} MiB ({r['cached']:,} images).", ""]
    lines += ["Peak RSS of `verify` includes the touched pages of the memory-mapped cache (file-backed, "
              "written once, never copied); baseline RSS after imports is in the JSON.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.phase:
        print(json.dumps(run_phase(args.phase, args.data_dir, args.workers, args.size)))
        return 0
    data_dir, manifest = ensure_data(args.work_dir, args.n_reports, args.image_size, args.workers)
    print(f"benchmarking on {data_dir} ({manifest['n_images']} images)", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in PHASES}
    for phase in ("read", "parse"):
        runs[phase].append(spawn_phase(phase, data_dir, args.workers, args.size))
    for _ in range(args.repeats):
        for phase in ("floor", "verify"):
            runs[phase].append(spawn_phase(phase, data_dir, args.workers, args.size))
    phases = {}
    for phase, results in runs.items():
        phases[phase] = {
            "seconds": [r["seconds"] for r in results],
            "seconds_median": statistics.median(r["seconds"] for r in results),
            "cpu_seconds": [r["cpu_seconds"] for r in results],
            "cpu_seconds_median": statistics.median(r["cpu_seconds"] for r in results),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in results),
            "peak_rss_worker_mib": max(r["peak_rss_worker_mib"] for r in results),
            "rss_baseline_mib": results[0]["rss_baseline_mib"],
            "load": ", ".join(f"{r['load_before']}→{r['load_after']}" for r in results),
        }
    verify_last = runs["verify"][-1]
    result = {
        "date": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
        "n_reports": args.n_reports, "image_size": args.image_size, "n_images": manifest["n_images"],
        "png_archive_mib": round((data_dir / "NLMCXR_png.tgz").stat().st_size / 2**20, 1),
        "workers": args.workers or os.cpu_count(), "repeats": args.repeats, "note": args.note,
        "phases": phases, "cached": verify_last["cached"], "cache_mib": verify_last["cache_mib"],
        "verify_over_floor": round(phases["verify"]["seconds_median"] / phases["floor"]["seconds_median"], 3),
        "verify_over_floor_cpu": round(phases["verify"]["cpu_seconds_median"]
                                       / phases["floor"]["cpu_seconds_median"], 3),
    }
    print(f"verify / floor = {result['verify_over_floor']:.3f} wall, "
          f"{result['verify_over_floor_cpu']:.3f} CPU", flush=True)
    existing = json.loads(args.out.read_text()) if args.out.exists() else {}
    existing["quick" if args.quick else "full"] = result
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(existing, indent=2, sort_keys=True) + "\n")
    args.out.with_suffix(".md").write_text(render_markdown(existing))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
