"""The README's speed tables, read from the benchmark records in ``results/bench/``.

Why generated: a speed table typed by hand goes stale with every new record (ratios, commits and
file names retyped). Here each column is the newest
complete record of one device kind (CPU, or a GPU model), each cell is computed from that record,
and the table names the file, commit and time behind every column, so a committed record is the
only way a number reaches the README. ``python scripts/study.py readme`` rewrites the blocks.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Iterable, Mapping

from .bench import SCHEMA, TARGETS

#: A record counts for the speed table only when every stage was measured (``--stages`` can skip some).
FULL_STAGES = ("train", "eval", "herding", "class_means", "mnemonics", "flops")
PROJECTION_SCHEMA = SCHEMA + "/paper-projection"
STEP_PROFILE_SCHEMA = SCHEMA + "/step-profile"
GPU_TRAIN_TARGET = 5.0  # the design's GPU target (images/s against the reference on the same GPU)
PROJECTION_TARGET_MIN = 10.0  # full CIFAR-100 B50 N = 10 paper-schedule LUCIR run, one H100
GPU_MODELS = ("H200", "H100", "A100")
PEAK_TARGET_PCT = 100 * TARGETS["train_step_fraction_of_peak"]  # CPU only: no such target is set on a GPU


Record = tuple[str, Mapping[str, Any]]  # (file name, parsed JSON)


def load_records(bench_dir: str | Path) -> list[Record]:
    """Every ``*.json`` record in ``bench_dir``, oldest first (file names start with a UTC stamp)."""
    return [(p.name, json.loads(p.read_text())) for p in sorted(Path(bench_dir).glob("*.json"))]


def device_kind(name: Any) -> str:
    """``CPU`` or the GPU's model (``H100``): records of one kind share a column."""
    text = str(name or "")
    for model in GPU_MODELS:
        if model in text:
            return model
    return "CPU" if text.lower().startswith("cpu") else text or "not recorded"


def _record_device(rec: Mapping[str, Any]) -> str:
    if rec.get("schema") == PROJECTION_SCHEMA:
        run = next(iter(rec["runs"].values()))
        return run["device"]["name"]
    if rec.get("schema") == STEP_PROFILE_SCHEMA:
        return rec["provenance"].get("device") or rec.get("device")
    return rec["device"]["name"]


def newest_by_kind(records: Iterable[Record], schema: str) -> dict[str, Record]:
    """The newest record of ``schema`` per device kind; full benchmarks need every stage."""
    out: dict[str, Record] = {}
    for name, rec in records:
        if rec.get("schema") != schema:
            continue
        if schema == SCHEMA and not all(s in rec.get("stages", {}) for s in FULL_STAGES):
            continue
        out[device_kind(_record_device(rec))] = (name, rec)  # oldest first: the newest wins
    return out


def _ordered(kinds: Iterable[str]) -> list[str]:
    """CPU first, then the GPUs as :data:`GPU_MODELS` lists them."""
    rank = {"CPU": 0, **{m: i + 1 for i, m in enumerate(reversed(GPU_MODELS))}}
    return sorted(kinds, key=lambda k: (rank.get(k, 99), k))


def _verdict(ok: bool) -> str:
    return "met" if ok else "not met"


def _train_cell(st: Mapping[str, Any], kind: str) -> str:
    tr = st["train"]
    target = TARGETS["train_ratio_cpu"] if kind == "CPU" else GPU_TRAIN_TARGET
    how = ", ".join(v for v in (tr.get("ours_step"), tr.get("ours_precision")) if v)
    cell = (f"**{tr['ratio']:.2f}x** ({tr['ours']['median_images_per_s']:,.0f} vs "
            f"{tr['reference']['median_images_per_s']:,.0f} img/s{'; ' + how if how else ''})")
    variants = [f"{k.removeprefix('ours_')} {v:.2f}x" for k, v in tr.get("variant_ratios", {}).items()]
    if variants:
        cell += "; variants: " + ", ".join(variants)
    return f"{cell}; >= {target:g}x {_verdict(tr['ratio'] >= target)}"


def _ms(xs: list[float]) -> float:
    return 1e3 * statistics.median(xs)


def _gflops(x: float) -> str:
    return f"{x:,.0f}" if x >= 1000 else f"{x:.1f}"


def full_cells(rec: Mapping[str, Any], kind: str) -> dict[str, str]:
    """One column of the speed table: a cell per measure of a full benchmark record."""
    st = rec["stages"]
    h, cm, mn, fl = st["herding"], st["class_means"], st["mnemonics"], st["flops"]
    return {
        "train": _train_cell(st, kind),
        "herding": (f"**{h['speedup']:.0f}x** ({_ms(h['ours_s']):.1f} vs {_ms(h['reference_s']):.1f} ms); "
                    f">= {TARGETS['herding_speedup']:g}x {_verdict(h['speedup'] >= TARGETS['herding_speedup'])}"),
        "class_means": f"{cm['speedup']:.1f}x ({_ms(cm['ours_s']):.1f} vs {_ms(cm['reference_s']):.1f} ms)",
        "eval": (f"{st['eval']['ratio']:.2f}x ({st['eval']['ours']['median_images_per_s']:,.0f} vs "
                 f"{st['eval']['reference']['median_images_per_s']:,.0f} img/s)"),
        "mnemonics": ", ".join(f"{mn[k]:.1f} (K = {k.split('_')[1][1:]})"
                               for k in mn if k.endswith("_over_step")),
        "flops": (f"**{100 * fl['fraction_of_peak']:.1f}%** ({_gflops(fl['achieved_gflops'])} / "
                  f"{_gflops(fl['peak_gflops'])} GFLOP/s, {fl.get('matmul_dtype', '?')} matmul); "
                  + (f">= {PEAK_TARGET_PCT:g}% {_verdict(fl['fraction_of_peak'] >= TARGETS['train_step_fraction_of_peak'])}"
                     if kind == "CPU" else "no GPU target")),
    }


def projection_cell(rec: Mapping[str, Any]) -> str:
    parts, best = [], None
    for precision, run in rec["runs"].items():
        s = run["projection"]["total_s"]
        best = s if best is None else min(best, s)
        parts.append(f"{s / 60:.1f} min {precision} ({s:.0f} s)")
    return f"projected {', '.join(parts)}; <= {PROJECTION_TARGET_MIN:g} min {_verdict(best <= 60 * PROJECTION_TARGET_MIN)}"


# (cell key, row label, target column): the targets are the constants the cells are judged by
MEASURES = (
    ("train", "training images/s, ours / reference (ResNet-32, batch 128)",
     f">= {TARGETS['train_ratio_cpu']:g}x CPU, >= {GPU_TRAIN_TARGET:g}x GPU"),
    ("herding", "herding, vectorised / per-sample loop (same indices)", f">= {TARGETS['herding_speedup']:g}x"),
    ("class_means", "NME class means / per-class loop", ""),
    ("eval", "evaluation images/s, ours / reference", ""),
    ("mnemonics", "one mnemonics outer iteration, in training steps", ""),
    ("flops", "training step GFLOP/s / measured matmul peak", f">= {PEAK_TARGET_PCT:g}% (CPU)"),
    ("projection", "full CIFAR-100 B50 N = 10 paper-schedule LUCIR run", f"<= {PROJECTION_TARGET_MIN:g} min (H100)"),
)


def _provenance(name: str, rec: Mapping[str, Any]) -> str:
    prov = rec.get("provenance") or {}
    commit = (prov.get("git_commit") or "?")[:7]
    when = rec.get("created_utc") or name[:16]
    threads = (rec.get("device") or {}).get("torch_threads") if isinstance(rec.get("device"), dict) else None
    extra = f", {threads} torch thread(s)" if threads and device_kind(_record_device(rec)) == "CPU" else ""
    return f"`{name}` (commit {commit}, {when}{extra})"


def speed_table(records: Iterable[Record]) -> str:
    """The speed table: one column per device kind (its newest full record), one row per measure,
    then the record behind each column."""
    records = list(records)
    full = newest_by_kind(records, SCHEMA)
    proj = newest_by_kind(records, PROJECTION_SCHEMA)
    kinds = _ordered(set(full) | set(proj))
    cols = {k: full_cells(full[k][1], k) if k in full else {} for k in kinds}
    for k in kinds:
        if k in proj:
            cols[k]["projection"] = projection_cell(proj[k][1])
    lines = ["| measure | target | " + " | ".join(kinds) + " |", "|---|---|" + "---|" * len(kinds)]
    for key, label, target in MEASURES:
        lines.append(f"| {label} | {target} | " + " | ".join(cols[k].get(key, "") for k in kinds) + " |")
    lines.append("")
    for k in kinds:
        srcs = [_provenance(*full[k])] if k in full else []
        srcs += [f"projection {_provenance(*proj[k])}"] if k in proj else []
        lines.append(f"- {k}: " + "; ".join(srcs))
    return "\n".join(lines)


def step_profile_table(records: Iterable[Record]) -> str:
    """The newest step profile per device kind: kernels per step, their time, the graphed step's
    wall time, and the ratio they imply against the reference pipeline of the same device kind's
    newest full benchmark (not a same-process measurement: the benchmark's own ratio stands)."""
    records = list(records)
    full = newest_by_kind(records, SCHEMA)
    lines = ["| device | variant | kernels / step | kernel time | graphed step | same step on one fixed batch | "
             "implied ratio: reference step / kernel time, / graphed step |",
             "|---|---|---|---|---|---|---|"]
    notes = []
    profiles = newest_by_kind(records, STEP_PROFILE_SCHEMA)
    for kind in _ordered(profiles):  # the speed table's column order
        name, rec = profiles[kind]
        ref_ms = None
        if kind in full:
            tr = full[kind][1]["stages"]["train"]
            ref_ms = 1e3 * rec["batch"] / tr["reference"]["median_images_per_s"]
            notes.append(f"- {kind}: {_provenance(name, rec)}; reference step {ref_ms:.1f} ms from "
                         f"`{full[kind][0]}`")
        for variant, v in rec["variants"].items():
            implied = (f"{ref_ms / v['kernel_ms_per_step']:.2f}x, {ref_ms / v['graphed_ms_per_step']:.2f}x"
                       if ref_ms else "no reference record")
            lines.append(f"| {kind} | {variant} | {v['kernels_per_step']:.0f} | {v['kernel_ms_per_step']:.2f} ms | "
                         f"{v['graphed_ms_per_step']:.2f} ms | {v['step_alone_ms_per_step']:.2f} ms | {implied} |")
    return "\n".join(lines + [""] + notes)


FOLDER_SCHEMA = "folder-data-bench/1"  # scripts/bench_folder_data.py


def folder_bench_table(records: Iterable[Record]) -> str:
    """docs/imagenet.md's input-pipeline table: the newest folder-data record per device kind, one
    row per image size (the study's pipeline against ImageFolder + PIL + DataLoader)."""
    newest: dict[str, Record] = {}
    for name, rec in records:
        if rec.get("schema") == FOLDER_SCHEMA:
            newest[device_kind(rec["device"].get("gpu") or "cpu")] = (name, rec)
    if not newest:
        return "No record yet: run `python scripts/bench_folder_data.py`."
    lines = ["| device | crop | ImageFolder img/s | study img/s | ratio_vs_imagefolder | first epoch incl. "
             "cache build | eval ratio | cache build img/s | training img/s (input share) |",
             "|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for kind in _ordered(newest):
        name, rec = newest[kind]
        for size in rec["sizes"].values():
            tr, tn = size["train"], size.get("training")
            train_txt = (f"{tn['end_to_end_images_per_s']:.0f} on {tn['device']} ({tn['input_share_of_step']:.0%})"
                         if tn else "not measured")
            lines.append(f"| {kind} | {size['crop']} px | {tr['imagefolder_images_per_s']:.0f} | "
                         f"{tr['study_images_per_s']:.0f} | **{tr['ratio_vs_imagefolder']:.2f}x** | "
                         f"{tr['ratio_first_epoch']:.2f}x | {size['eval']['ratio_vs_imagefolder']:.2f}x | "
                         f"{size['cache_build_images_per_s']:.0f} | {train_txt} |")
        d = rec["device"]
        notes.append(f"{kind}: `{name}` ({rec['dataset']}, {rec['workers']} workers = threads, "
                     f"{d['cpu_count']} cores, load average {d['load_avg_at_start'][0]:.2f} at the start, "
                     f"median of {rec['repeats']} interleaved pairs, commit {rec['provenance']['commit'][:8]}).")
    return "\n".join(lines + [""] + notes)


def speed_blocks(bench_dir: str | Path) -> dict[str, str]:
    """The README blocks ``speed`` and ``step-profile``, docs/imagenet.md's ``folder-bench``."""
    records = load_records(bench_dir)
    return {"speed": speed_table(records), "step-profile": step_profile_table(records),
            "folder-bench": folder_bench_table(records)}
