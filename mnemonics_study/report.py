"""Tables (Markdown + CSV) and seaborn figures (PNG + PDF) from ledger records, each saved with
its provenance in a sidecar ``<name>.provenance.json`` (config hashes, commits, devices, profile,
dataset, the runs not run). Files are named by what they hold (:func:`output_name`: artifact,
dataset, profile, the phases N, the seeds when not the study's three, the exemplars per class when
not the paper's 20), so executions with other parameters never overwrite each other's files.

Inputs are :class:`mnemonics_study.results.RunRecord` lists as returned by
:func:`mnemonics_study.study.run_configs` / :func:`~mnemonics_study.study.snapshot_records`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from mnemonics_lib.config import RunConfig

from . import paper_numbers
from .study import README_SPECS, SEEDS, as_list, notebook_dir, spec_of

HEADLINE_HEAD = {"icarl": "nme"}  # iCaRL's classifier is NME; every other method's is the CNN head
_TAG_LEGEND = ("Paper-number tags: [code] read in the authors' code; [3p] quoted by a third party; "
               "[recalled] widely cited, not confirmed against the PDF.")
_DATASET_NOTES = {
    "caltech100": "caltech100 = 32x32 Caltech-101 without Faces_easy (100 classes, ~58 train images "
                  "per class, imbalanced), the offline stand-in for CIFAR-100",
    "synthetic": "synthetic = the smoke-test set (20 classes of noisy colour templates); proves the "
                 "plumbing, says nothing about accuracy",
    "cifar10": "cifar10 = the offline CIFAR-10 copy (decoded from JPEG); no paper numbers exist for it",
    "caltech101_jpeg": "caltech101_jpeg = Caltech-101 JPEGs in the ImageNet layout (100 classes, ~55 train "
                       "images per class, shorter side <= 144 px), the offline stand-in for ImageNet-Subset",
}


def profile_note(profile: str, dataset: str = "caltech100") -> str:
    """The schedule a profile stands for on ``dataset``, read from the resolved config (never typed
    twice): the folder datasets run ResNet-18 on their own epochs and image sizes."""
    from mnemonics_lib.config import ConfigError, make_config

    try:
        c = make_config(dataset=dataset, profile=profile, method="lucir")
    except ConfigError:
        return profile
    s = c.schedule
    size = f", {c.image.crop} px crops" if c.is_folder else ""
    return (f"{profile} profile (ResNet-{s.depth}, width {s.width}{size}, {s.base_epochs} epochs in phase 0 / "
            f"{s.epochs} later, M={s.mnemonics_outer_iters} mnemonics iterations)")


def short_device(name: Any, cpu_compile: Any = None) -> str:
    """The GPU model (H200, H100, A100, or its full name), else CPU (``compiled`` when its steps were)."""
    name = str(name if name is not None else "?")
    for gpu in ("H200", "H100", "A100"):
        if gpu in name:
            return gpu
    if "cuda" in name.lower() or "nvidia" in name.lower():
        return name
    if name == "?":
        return "not recorded"
    return "CPU compiled" if cpu_compile else "CPU"


def device_of(env: Mapping[str, Any]) -> str:
    """A short device label: the GPU's model, or CPU (``compiled`` when its steps were). A run
    resumed on another device (``env["legs"]``) names each device with the phases it ran there."""
    last = short_device(env.get("device"), env.get("cpu_compile"))
    legs = env.get("legs") or []
    labels = [short_device(leg.get("device"), leg.get("cpu_compile")) for leg in legs[:-1]]
    if not legs or all(lab == last for lab in labels):
        return last
    stretches: list[list[Any]] = []  # [label, first phase], consecutive legs on one device merged
    for lab, leg in zip(labels + [last], legs):
        if not stretches or stretches[-1][0] != lab:
            stretches.append([lab, leg.get("first_phase")])
    parts = [f"{lab} (phases {first}-{nxt[1] - 1})" for (lab, first), nxt in zip(stretches, stretches[1:])]
    return " + ".join(parts + [f"{stretches[-1][0]} (phases {stretches[-1][1]}-)"])


def label_of(spec: str) -> str:
    return paper_numbers.METHOD_LABELS.get(spec, spec)


def headline_head(method: str) -> str:
    return HEADLINE_HEAD.get(method, "cnn")


# ------------------------------------------------------------------ frames
def _legs(env: dict[str, Any], key: str, short=lambda v: v) -> list[str]:
    """The distinct values of ``key`` over a resumed run's legs (``env["legs"]``), in order."""
    out: list[str] = []
    for leg in env.get("legs") or []:
        v = short(leg.get(key) or "not recorded")
        if v not in out:
            out.append(v)
    return out


def _commit(env: dict[str, Any]) -> str:
    c = (env.get("git_commit") or "unknown")[:8]
    legs = _legs(env, "git_commit", lambda v: v[:8])
    c = " + ".join(legs) if len(legs) > 1 else c  # a run resumed at other commits names them all
    return c + ("+dirty" if env.get("git_dirty") else "")


def _device(env: dict[str, Any]) -> str | None:
    legs = _legs(env, "device")
    return " + ".join(legs) if len(legs) > 1 else env.get("device")


RUN_COLUMNS = ("spec", "dataset", "method", "exemplars", "phases", "seed", "class_order_seed", "profile",
               "memory_per_class", "inner_lr", "outer_lr", "inner_steps", "aia_cnn", "aia_nme", "last_cnn",
               "last_nme", "forgetting_cnn", "forgetting_nme", "wall_s_total", "exemplar_stage_epochs",
               "config_hash", "commit", "device", "run_id", "aia", "forgetting")
PHASE_COLUMNS = ("spec", "label", "phases", "seed", "phase", "n_classes", "acc", "acc_cnn", "acc_nme",
                 "acc_upper", "config_hash")


def exemplar_stage_epochs(config: Mapping[str, Any], per_phase: Sequence[Mapping[str, Any]]) -> float:
    """Wall time of the exemplar stage in epochs of model training, over the incremental phases:
    sum of their ``exemplars`` seconds / sum of their per-epoch ``train`` seconds. Phase 0 is left
    out (its training may come from the shared phase-0 cache). The stage includes class-balanced
    fine-tuning where the run uses it. NaN for a run without an incremental phase or timings."""
    epochs = (config.get("schedule") or {}).get("epochs")
    rows = [r for r in per_phase if r.get("phase", 0) > 0 and isinstance(r.get("wall_s"), Mapping)]
    if not epochs or not rows:
        return math.nan
    per_epoch = sum(float(r["wall_s"].get("train", math.nan)) for r in rows) / epochs
    stage = sum(float(r["wall_s"].get("exemplars", math.nan)) for r in rows)
    return stage / per_epoch if per_epoch > 0 else math.nan


def runs_frame(records: Sequence[Any]) -> pd.DataFrame:
    """One row per run: config fields, run spec, run-level metrics, provenance (the columns of
    ``RUN_COLUMNS`` even when there is no run)."""
    rows = []
    for r in records:
        c, m = r.config, r.metrics
        mn = c.get("mnemonics") or {}  # None for a run without mnemonics exemplars (not in its hash)
        rows.append({
            "spec": spec_of(c), "dataset": c["dataset"], "method": c["method"], "exemplars": c["exemplars"],
            "phases": c["phases"], "seed": c["seed"], "class_order_seed": c["class_order_seed"],
            "profile": c["profile"], "memory_per_class": c["memory_per_class"],
            **{k: mn.get(k, math.nan) for k in ("inner_lr", "outer_lr", "inner_steps")},
            **{k: float(m[k]) if m.get(k) is not None else math.nan
               for k in ("aia_cnn", "aia_nme", "last_cnn", "last_nme", "forgetting_cnn", "forgetting_nme",
                         "wall_s_total")},
            "exemplar_stage_epochs": exemplar_stage_epochs(c, m["per_phase"]),
            "config_hash": c["config_hash"], "commit": _commit(r.env), "device": _device(r.env),
            "run_id": r.run_id,
        })
    df = pd.DataFrame(rows, columns=list(RUN_COLUMNS[:-2]))
    df["aia"] = [row[f"aia_{headline_head(row['method'])}"] for _, row in df.iterrows()]
    df["forgetting"] = [row[f"forgetting_{headline_head(row['method'])}"] for _, row in df.iterrows()]
    return df


def phases_frame(records: Sequence[Any]) -> pd.DataFrame:
    """One row per (run, phase): accuracies after that phase (%); ``PHASE_COLUMNS`` when empty."""
    rows = []
    for r in records:
        c = r.config
        head = headline_head(c["method"])
        for p in r.metrics["per_phase"]:
            rows.append({
                "spec": spec_of(c), "label": label_of(spec_of(c)), "phases": c["phases"], "seed": c["seed"],
                "phase": p["phase"], "n_classes": p["n_classes"], "acc": p[f"acc_{head}"],
                "acc_cnn": p["acc_cnn"], "acc_nme": p["acc_nme"],
                "acc_upper": math.nan if p.get("acc_upper") is None else p["acc_upper"],
                "config_hash": c["config_hash"],
            })
    return pd.DataFrame(rows, columns=list(PHASE_COLUMNS))


# ------------------------------------------------------------------ runs not run (missing="skip")
NOT_RUN = "n/a (not run)"  # a table cell none of whose runs is in the ledger


def missing_of(records: Sequence[Any], missing: Sequence[Any] | None = None) -> list:
    """The configs asked for and not in the ledger: ``missing`` when given, else the
    ``missing`` attribute of a :class:`mnemonics_study.study.Records`, else none."""
    return list(missing) if missing is not None else list(getattr(records, "missing", None) or [])


def _config_dict(c: Any) -> dict[str, Any]:
    d = c.to_dict() if hasattr(c, "to_dict") else dict(c)
    return {**d, "config_hash": c.config_hash() if hasattr(c, "config_hash") else d["config_hash"]}


def output_name(artifact: str, records: Sequence[Any], *, dataset: str, profile: str,
                missing: Sequence[Any] | None = None) -> str:
    """The file stem of an artifact, from the runs it asked for (found or not):
    ``<artifact>_<dataset>_<profile>_N<n>[-<n>...]``, plus ``_seeds<s>[-<s>...]`` when the seeds are
    not the study's three and ``_m<k>`` when the runs keep k exemplars per class instead of the
    paper's 20. E.g. ``table1_caltech100_quick_N5-10-25`` (``make figures``) and
    ``table1_caltech100_quick_N10`` (``-p phases 10``) are two files."""
    configs = [r.config for r in records] + [_config_dict(c) for c in missing_of(records, missing)]
    name = f"{artifact}_{dataset}_{profile}"
    ns = sorted({int(c["phases"]) for c in configs})
    if ns:
        name += "_N" + "-".join(map(str, ns))
    seeds = sorted({int(c["seed"]) for c in configs})
    if seeds and seeds != sorted(SEEDS):
        name += "_seeds" + "-".join(map(str, seeds))
    memory = sorted({int(c["memory_per_class"]) for c in configs if c.get("memory_mode", "per_class") == "per_class"})
    if memory and memory != [RunConfig.memory_per_class]:
        name += "_m" + "-".join(map(str, memory))
    return name


def missing_frame(missing: Sequence[Any]) -> pd.DataFrame:
    """One row per missing config: its spec and the config fields the tables group by."""
    rows = []
    for c in map(_config_dict, missing):
        mn = c.get("mnemonics") or {}
        rows.append({"spec": spec_of(c), "dataset": c["dataset"], "method": c["method"],
                     "exemplars": c["exemplars"], "phases": c["phases"], "seed": c["seed"],
                     "profile": c["profile"],
                     **{k: mn.get(k, math.nan) for k in ("inner_lr", "outer_lr", "inner_steps")},
                     "config_hash": c["config_hash"]})
    return pd.DataFrame(rows, columns=["spec", "dataset", "method", "exemplars", "phases", "seed", "profile",
                                       "inner_lr", "outer_lr", "inner_steps", "config_hash"])


def _wanted_frame(records: Sequence[Any], missing: Sequence[Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(found runs, every wanted run with a ``found`` flag) in the order asked when known."""
    found = runs_frame(records)
    miss = missing_frame(missing)
    cols = list(miss.columns)
    frames = [f for f in (found[cols].assign(found=True), miss.assign(found=False)) if len(f)]
    wanted = (pd.concat(frames, ignore_index=True) if frames
              else pd.DataFrame(columns=cols + ["found"]))
    order = {h: i for i, h in enumerate(getattr(records, "order", None) or [])}
    if order:
        wanted = wanted.assign(_o=[order.get(h, len(order)) for h in wanted["config_hash"]])
        wanted = wanted.sort_values("_o", kind="stable").drop(columns="_o").reset_index(drop=True)
    return found, wanted


def availability(n_found: int, missing: Sequence[Any]) -> str:
    """'Runs available: 5 of 45 (...)': the sentence every caption ends with."""
    total = n_found + len(missing)
    if not missing:
        return f"Runs available: all {total}."
    profiles = ", ".join(f"`make results PROFILE={p}`" for p in sorted({_config_dict(c)["profile"]
                                                                        for c in missing}))
    return (f"Runs available: {n_found} of {total}; {len(missing)} not run (cells \"{NOT_RUN}\"; "
            f"compute them with {profiles}).")


def _cell_text(mean: float, std: float, n: int, n_missing: int) -> str:
    """A table cell over seeds: NOT_RUN when none ran, 'k of n seeds' when some did not."""
    if n == 0:
        return NOT_RUN
    text = _fmt(mean, std, n)
    return text + (f" ({n} of {n + n_missing} seeds)" if n_missing else "")


def _cells(found: pd.DataFrame, wanted: pd.DataFrame, keys: list[str], value: str) -> pd.DataFrame:
    """One row per wanted cell (``keys``, in the order asked): mean/std/count of ``value`` over
    the found runs (count 0 and NaN for a cell not run), ``n_missing`` and the provenance lists."""
    cells = wanted[keys].drop_duplicates().reset_index(drop=True)
    if len(found):
        cells = cells.merge(_group(found, keys, value), on=keys, how="left")
    else:
        cells = cells.assign(mean=math.nan, std=math.nan, count=0)
    cells["count"] = cells["count"].fillna(0).astype(int)
    for col in ("seeds", "config_hashes", "commit", "device"):
        cells[col] = cells[col].fillna("") if col in cells else ""
    n_miss = wanted[~wanted["found"].astype(bool)].groupby(keys, sort=False, dropna=False).size()
    cells["n_missing"] = [int(n_miss.get(tuple(k) if len(keys) > 1 else k[0], 0))
                          for k in cells[keys].itertuples(index=False)]
    return cells


def provenance(records: Sequence[Any], *, artifact: str, profile: str, dataset: str,
               missing: Sequence[Any] | None = None, **extra: Any) -> dict[str, Any]:
    """What a saved table or figure was made from (the sidecar JSON's content), and which of the
    runs it asked for were not run (``missing``; default: ``records.missing``)."""
    envs = [r.env for r in records]
    miss = [_config_dict(c) for c in missing_of(records, missing)]
    return {
        "artifact": artifact, "dataset": dataset, "profile": profile, "n_runs": len(records),
        "n_runs_wanted": len(records) + len(miss), "complete": not len(miss),
        "config_hashes": sorted({r.config["config_hash"] for r in records}),
        "commits": sorted({_commit(e) for e in envs}),
        "devices": sorted({str(_device(e)) for e in envs}),
        "torch": sorted({str(e.get("torch")) for e in envs}),
        "run_dirs": sorted(str(r.path) for r in records),
        "not_run": [{"spec": spec_of(d), "dataset": d["dataset"], "phases": int(d["phases"]),
                     "seed": int(d["seed"]), "config_hash": d["config_hash"]} for d in miss],
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def footer(prov: dict[str, Any], name: str | None = None) -> str:
    """One short line under a Markdown table: how many runs, and where the provenance is."""
    wanted = prov.get("n_runs_wanted", prov["n_runs"])
    runs = (f"{prov['n_runs']} runs" if wanted == prov["n_runs"]
            else f"{prov['n_runs']} of {wanted} runs ({wanted - prov['n_runs']} not run)")
    where = f"`{name}{SIDECAR}`" if name else f"the sidecar `*{SIDECAR}`"
    return (f"{prov['artifact']} | dataset {prov['dataset']} | profile {prov['profile']} | {runs} | "
            f"provenance (config hashes, commits, devices) in {where}")


def _fmt(mean: float, std: float, n: int) -> str:
    if not np.isfinite(mean):
        return "—"
    return f"{mean:.2f}" if n < 2 or not np.isfinite(std) else f"{mean:.2f} ± {std:.2f}"


def _group(df: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    """Mean, std (ddof 1) and count over seeds, plus the provenance lists of each group."""
    g = df.groupby(by, sort=False, dropna=False)
    out = g[value].agg(["mean", "std", "count"]).reset_index()
    out["seeds"] = g["seed"].apply(lambda s: ",".join(str(v) for v in sorted(s))).values
    out["config_hashes"] = g["config_hash"].apply(lambda s: " ".join(h[:8] for h in s)).values
    out["commit"] = g["commit"].apply(lambda s: ",".join(sorted(set(s)))).values
    out["device"] = g["device"].apply(lambda s: ",".join(sorted(set(map(str, s))))).values
    return out


# ------------------------------------------------------------------ tables
@dataclass
class Table:
    name: str  # file stem
    long: pd.DataFrame  # tidy, the CSV
    wide: pd.DataFrame  # the Markdown view
    caption: str
    provenance: dict[str, Any] = field(default_factory=dict)


def _caption(what: str, dataset: str, profile: str, records: Sequence[Any],
             missing: Sequence[Any] | None = None) -> str:
    """The protocol of every run asked for (found or not), then how many of them are available."""
    missing = missing_of(records, missing)
    configs = [r.config for r in records] + [_config_dict(c) for c in missing]
    ds = _DATASET_NOTES.get(dataset, dataset)
    seeds = sorted({c["seed"] for c in configs})
    base = sorted({str(c["base_classes"] or "half the") for c in configs})
    mem = sorted({(c["memory_mode"], c["memory_per_class"], c["memory_total"]) for c in configs})
    mem_txt = ", ".join(f"{m} exemplars/class" if mode == "per_class" else f"{t} exemplars in total"
                        for mode, m, t in mem)
    caps = sorted({c.get("train_per_class") or 0 for c in configs})
    cap_txt = "".join(f"; at most {n} training images per class (a fixed subset)" if n else
                      ("; all training images" if len(caps) > 1 else "") for n in caps)
    return (f"{what} Mean ± std over seeds {seeds} (a seed fixes the class order and the training). "
            f"Ours: {ds}{cap_txt}; {profile_note(profile, dataset)}; {'/'.join(base)} classes in phase 0; "
            f"memory: {mem_txt}. {availability(len(records), missing)}")


def table1(records: Sequence[Any], *, dataset: str, profile: str,
           missing: Sequence[Any] | None = None) -> Table:
    """Table 1: AIA (%) per method and N, the paper's number (tag) and the difference beside ours.
    A cell none of whose runs exists reads ``NOT_RUN`` (``missing``: default ``records.missing``)."""
    missing = missing_of(records, missing)
    df, wanted = _wanted_frame(records, missing)
    g = _cells(df, wanted, ["spec", "method", "phases"], "aia")
    paper = [paper_numbers.table1_number(s, dataset, n) for s, n in zip(g["spec"], g["phases"])]
    g["paper"] = [p.value if p else math.nan for p in paper]
    g["paper_tag"] = [p.tag if p else "" for p in paper]
    g["paper_source"] = [p.source if p else "" for p in paper]
    g["paper_dataset"] = paper_numbers.PAPER_DATASET.get(dataset)
    g["delta"] = g["mean"] - g["paper"]
    g["head"] = [headline_head(m) for m in g["method"]]
    g.insert(0, "label", [label_of(s) for s in g["spec"]])
    long = g.rename(columns={"mean": "aia_mean", "std": "aia_std", "count": "n_seeds"})
    long["dataset"], long["profile"] = dataset, profile
    rows = []
    for spec, sub in long.groupby("spec", sort=False):
        row: dict[str, Any] = {"method": label_of(spec)}
        for _, r in sub.iterrows():
            n = int(r["phases"])
            row[f"N={n} ours"] = _cell_text(r["aia_mean"], r["aia_std"], int(r["n_seeds"]),
                                            int(r["n_missing"]))
            row[f"N={n} paper"] = f"{r['paper']:.2f} {r['paper_tag']}" if np.isfinite(r["paper"]) else "—"
            row[f"N={n} Δ"] = f"{r['delta']:+.2f}" if np.isfinite(r["delta"]) else "—"
        row["config hashes"] = " ".join(h for h in sub["config_hashes"] if h) or "—"
        row["commit"] = ",".join(sorted(set(sub["commit"]) - {""})) or "—"
        row["device"] = ",".join(sorted(set(sub["device"]) - {""})) or "—"
        rows.append(row)
    pds = paper_numbers.PAPER_DATASET.get(dataset)
    what = ("Table 1: average incremental accuracy (%, phase 0 included; CNN head, NME for iCaRL)."
            + (f" Paper numbers are {pds} (arXiv v6); Δ = ours − paper." if pds else " No paper numbers."))
    if dataset != pds:
        what += " Different dataset: Δ is context, not a reproduction verdict."
    cap = _caption(what, dataset, profile, records, missing) + " " + _TAG_LEGEND
    return Table(output_name("table1", records, dataset=dataset, profile=profile,
                             missing=missing),
                 long, pd.DataFrame(rows), cap,
                 provenance(records, artifact="table1", profile=profile, dataset=dataset, missing=missing))


def ablation_table(records: Sequence[Any], *, dataset: str, profile: str,
                   missing: Sequence[Any] | None = None) -> Table:
    """Exemplar type under each method: AIA (CNN, NME), forgetting, Δ vs herding of the same method;
    ``NOT_RUN`` where no run of a cell exists."""
    missing = missing_of(records, missing)
    df, wanted = _wanted_frame(records, missing)
    keys = ["spec", "method", "exemplars", "phases"]
    long = None
    for value in ("aia", "aia_cnn", "aia_nme", "forgetting_cnn", "last_cnn", "exemplar_stage_epochs"):
        g = _cells(df, wanted, keys, value).rename(
            columns={"mean": f"{value}_mean", "std": f"{value}_std", "count": "n_seeds"})
        long = g if long is None else long.merge(g[keys + [f"{value}_mean", f"{value}_std"]], on=keys)
    paired = [_paired_delta(df, r["spec"], r["method"], r["phases"]) for _, r in long.iterrows()]
    long["delta_vs_herding"] = [d for d, _, _ in paired]
    long["delta_seeds"] = [k for _, k, _ in paired]
    long["delta_seeds_either"] = [u for _, _, u in paired]
    long["dataset"], long["profile"] = dataset, profile

    def col(value: str) -> list[str]:
        return [_cell_text(m, s, n, k) for m, s, n, k in
                zip(long[f"{value}_mean"], long[f"{value}_std"], long["n_seeds"], long["n_missing"])]

    wide = pd.DataFrame({
        "run spec": long["spec"], "N": long["phases"],
        "AIA CNN": col("aia_cnn"), "AIA NME": col("aia_nme"), "forgetting CNN": col("forgetting_cnn"),
        "exemplar stage (epochs)": col("exemplar_stage_epochs"),
        "Δ AIA vs herding": [_delta_text(d, m, k, u) for d, m, k, u in zip(
            long["delta_vs_herding"], long["method"], long["delta_seeds"], long["delta_seeds_either"])],
        **{name: long[col].replace("", "—") for name, col in (("config hashes", "config_hashes"),
                                                              ("commit", "commit"), ("device", "device"))},
    })
    cap = _caption("Exemplar ablation: random vs herding vs mnemonics (paper §3) vs the authors' released "
                   "procedure (authors_code), under each method; +flags are the deconfounding runs "
                   "(no_adjust_old: old exemplars not adjusted; weight_transfer: frozen conv + learnable "
                   "scales; balanced_finetune: class-balanced fine-tuning, default only for mnemonics). "
                   "Δ: AIA of the method's own classifier (CNN; NME for iCaRL) minus the same method with "
                   "herding, paired by seed (the mean over the seeds both have). Exemplar stage: its "
                   "wall time in epochs of model training (incremental phases; includes class-balanced "
                   "fine-tuning where used). The paper's ablation numbers were not recovered, so there is "
                   "no paper column.",
                   dataset, profile, records, missing)
    return Table(output_name("ablation_exemplars", records, dataset=dataset, profile=profile,
                             missing=missing),
                 long, wide, cap,
                 provenance(records, artifact="ablation_exemplars", profile=profile, dataset=dataset,
                            missing=missing))


def _paired_delta(found: pd.DataFrame, spec: str, method: str, phases: int) -> tuple[float, int, int]:
    """Mean over the seeds both have of AIA(spec) - AIA(method with herding), how many seeds
    that is, and how many either has: a difference of means over different seed sets would mix
    the class orders' difficulty (one easy order can move a mean by several points) into it."""
    if not len(found):
        return math.nan, 0, 0
    at = found[found["phases"] == phases]
    a = at[at["spec"] == spec].groupby("seed")["aia"].mean()
    b = at[at["spec"] == method].groupby("seed")["aia"].mean()
    common, either = a.index.intersection(b.index), len(a.index.union(b.index))
    if not len(common):
        return math.nan, 0, either
    return float((a[common] - b[common]).mean()), len(common), either


def _delta_text(delta: float, method: str, k: int, either: int) -> str:
    """'+0.38 (CNN)', or '-2.18 (CNN), 2 paired seeds' when some seed has only one of the pair."""
    if not np.isfinite(delta):
        return "—"
    text = f"{delta:+.2f} ({headline_head(method).upper()})"
    return text + (f", {k} paired seed{'s' if k > 1 else ''}" if k < either else "")


def forgetting_table(records: Sequence[Any], *, dataset: str, profile: str,
                     missing: Sequence[Any] | None = None) -> Table:
    """AIA and forgetting of both heads beside the authors' README rows ('LwF' = CNN, 'iCaRL' = NME
    of the same run; 'w/ mnemonics' matched to our mnemonics and authors_code exemplars);
    ``NOT_RUN`` where no run of a cell exists."""
    missing = missing_of(records, missing)
    df, wanted = _wanted_frame(records, missing)
    rows = []
    for head in ("cnn", "nme"):
        for metric in ("aia", "forgetting"):
            g = _cells(df, wanted, ["spec", "phases"], f"{metric}_{head}")
            for _, r in g.iterrows():
                # the README's numbers sit beside runs of the code that produced them only
                mn = README_SPECS.get(r["spec"])
                row_name = paper_numbers.readme_row(head, mn) if mn is not None else "—"
                num = paper_numbers.AUTHORS_README.get((row_name, metric, int(r["phases"])))
                rows.append({"spec": r["spec"], "head": head, "metric": metric, "phases": int(r["phases"]),
                             "mean": r["mean"], "std": r["std"], "n_seeds": int(r["count"]),
                             "n_missing": int(r["n_missing"]),
                             "readme_row": row_name, "paper": num.value if num else math.nan,
                             "paper_tag": num.tag if num else "",
                             "config_hashes": r["config_hashes"], "commit": r["commit"],
                             "device": r["device"]})
    long = pd.DataFrame(rows)
    long["delta"] = long["mean"] - long["paper"]
    long["dataset"], long["profile"] = dataset, profile
    wide_rows = []
    for (spec, head), sub in long.groupby(["spec", "head"], sort=False):
        row: dict[str, Any] = {"run spec": spec, "head": head.upper(),
                               "README row": sub["readme_row"].iloc[0]}
        for _, r in sub.sort_values(["metric", "phases"]).iterrows():
            key = f"{'AIA' if r['metric'] == 'aia' else 'F'} N={r['phases']}"
            paper = f" (paper {r['paper']:.2f} {r['paper_tag']})" if np.isfinite(r["paper"]) else ""
            row[key] = _cell_text(r["mean"], r["std"], r["n_seeds"], r["n_missing"]) + paper
        row["config hashes"] = " ".join(h for h in sub["config_hashes"].unique() if h) or "—"
        row["commit"] = ",".join(sorted(set(sub["commit"]) - {""})) or "—"
        row["device"] = ",".join(sorted(set(sub["device"]) - {""})) or "—"
        wide_rows.append(row)
    cap = _caption("Average incremental accuracy (AIA) and forgetting F (accuracy on the phase-0 classes "
                   "after phase 0 minus after the last phase; lower is better), %, for the CNN and the NME "
                   "head of the same runs. The authors' code README (CIFAR-100) [code] is shown beside our runs "
                   "of the method it measured, their baseline trainer (cosinekd: cosine head, CE + KD, no "
                   "LUCIR losses, 2000 exemplars in total): its 'LwF' rows are the CNN head and its 'iCaRL' "
                   "rows the NME head of one run; its 'w/ mnemonics' rows come from the code's own exemplar "
                   "step (authors_code: herding, then one epoch of pixel SGD on a nearest-prototype loss, "
                   "no balanced fine-tuning) in the frozen-conv, learnable-scale network it switches to "
                   "from phase 1 (+weight_transfer). The paper's bilevel mnemonics (cosinekd_mnemonics) "
                   "and the LUCIR rows have no README counterpart (—).", dataset, profile, records, missing)
    return Table(output_name("forgetting", records, dataset=dataset, profile=profile,
                             missing=missing),
                 long, pd.DataFrame(wide_rows), cap,
                 provenance(records, artifact="forgetting", profile=profile, dataset=dataset,
                            missing=missing))


def sweep_table(records: Sequence[Any], *, dataset: str, profile: str,
                missing: Sequence[Any] | None = None) -> Table:
    """One row per sweep configuration (alpha, beta1, K); ``NOT_RUN`` for one not run."""
    missing = missing_of(records, missing)
    df, wanted = _wanted_frame(records, missing)
    keys = ["inner_steps", "inner_lr", "outer_lr"]
    metrics = ["aia_cnn", "aia_nme", "forgetting_cnn", "wall_s_total", "commit", "device"]
    long = wanted[keys + ["config_hash", "phases"]].merge(df[["config_hash"] + metrics], on="config_hash",
                                                         how="left")
    long = long.assign(status=np.where(long["config_hash"].isin(set(df["config_hash"])), "run", "not run"),
                       dataset=dataset, profile=profile)
    long = long[keys + metrics[:4] + ["status", "config_hash", "commit", "device", "dataset", "profile",
                                      "phases"]].sort_values(keys, kind="stable").reset_index(drop=True)
    wide = long.rename(columns={"inner_steps": "K", "inner_lr": "alpha", "outer_lr": "beta1"}).round(3)
    wide = wide.astype({c: object for c in metrics[:4]})
    wide.loc[wide["status"] == "not run", metrics[:4]] = NOT_RUN
    cap = _caption("Mnemonics sensitivity sweep (LUCIR w/ mnemonics, one seed): AIA (%) over the inner "
                   "learning rate alpha, the exemplar learning rate beta1 and the unrolled steps K.",
                   dataset, profile, records, missing)
    return Table(output_name("sweep_mnemonics", records, dataset=dataset, profile=profile,
                             missing=missing),
                 long, wide, cap,
                 provenance(records, artifact="sweep_mnemonics", profile=profile, dataset=dataset,
                            missing=missing))


MARGIN_COLUMNS = ("exemplars", "stage", "phase", "kind", "margin")


def margins_frame(snapshot_records: Sequence[Any]) -> pd.DataFrame:
    """One row per exemplar / sampled real image and recorded phase: its class margin."""
    rows = []
    for r in snapshot_records:
        strategy = r.config["exemplars"]
        snaps = r.metrics["snapshots"]
        for i, s in enumerate(snaps):
            when = "early" if i == 0 and len(snaps) > 1 else "late"
            for kind, key in (("exemplar", "exemplar_margin"), ("real", "real_margin")):
                rows += [{"exemplars": strategy, "stage": f"{when} (phase {s['phase']})", "phase": s["phase"],
                          "kind": kind, "margin": v} for v in s[key]]
    return pd.DataFrame(rows, columns=list(MARGIN_COLUMNS))


def margin_table(snapshot_records: Sequence[Any], *, dataset: str, profile: str,
                 missing: Sequence[Any] | None = None) -> Table:
    """The numeric answer to 'exemplars lie on class boundaries': exemplar vs real-data margins;
    a strategy whose snapshot run is missing gets one row, stage ``NOT_RUN``."""
    missing = missing_of(snapshot_records, missing)
    df = margins_frame(snapshot_records)
    cols = ["exemplars", "stage", "kind", "median", "mean", "count", "frac_below_zero"]
    if len(df):
        g = df.groupby(["exemplars", "stage", "kind"], sort=False)["margin"]
        long = g.agg(["median", "mean", "count"]).reset_index()
        long["frac_below_zero"] = g.apply(lambda s: float((s < 0).mean())).values
    else:
        long = pd.DataFrame(columns=cols)
    not_run = pd.DataFrame([{"exemplars": _config_dict(c)["exemplars"], "stage": NOT_RUN, "kind": "",
                             "median": math.nan, "mean": math.nan, "count": 0, "frac_below_zero": math.nan}
                            for c in missing], columns=cols)
    long = pd.concat([x for x in (long, not_run) if len(x)], ignore_index=True) if len(long) + len(not_run) \
        else long
    long = long.astype({"median": float, "mean": float, "frac_below_zero": float, "count": int})
    real_med = long[long["kind"] == "real"].set_index(["exemplars", "stage"])["median"]
    long["median_minus_real_median"] = [r["median"] - real_med.get((r["exemplars"], r["stage"]), math.nan)
                                        for _, r in long.iterrows()]
    long["dataset"], long["profile"] = dataset, profile
    cap = _caption("Class margins (cosine to the own class mean minus the largest cosine to another class "
                   "mean, features of the same model, class means from all real training images): "
                   "exemplars of every seen class vs up to 60 real images per class. A lower exemplar "
                   "median than the real median means exemplars sit nearer the class boundaries.",
                   dataset, profile, snapshot_records, missing)
    return Table(output_name("exemplar_margins", snapshot_records, dataset=dataset, profile=profile,
                             missing=missing),
                 long, long.round(4), cap,
                 provenance(snapshot_records, artifact="exemplar_margins", profile=profile, dataset=dataset,
                            missing=missing))


def to_markdown(df: pd.DataFrame) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            v = "—" if not np.isfinite(v) else f"{v:.4g}"
        return str(v).replace("|", "\\|").replace("\n", " ")

    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


SIDECAR = ".provenance.json"


def _sidecar(stem: Path, prov: dict[str, Any], files: list[Path]) -> Path:
    side = stem.parent / f"{stem.name}{SIDECAR}"
    side.write_text(json.dumps({**prov, "files": [f.name for f in files]}, indent=2, sort_keys=True) + "\n")
    return side


def save_table(table: Table, figures_dir: str | Path) -> list[Path]:
    """``<name>.md`` (caption, table, a one-line footer), ``<name>.csv`` (tidy) and
    ``<name>.provenance.json``."""
    out = notebook_dir(figures_dir)  # relative to notebooks/, whatever the cwd
    out.mkdir(parents=True, exist_ok=True)
    stem = out / table.name
    md, csv = stem.with_suffix(".md"), stem.with_suffix(".csv")
    md.write_text(f"{table.caption}\n\n{to_markdown(table.wide)}\n\n"
                  f"_{footer(table.provenance, table.name)}_\n")
    table.long.to_csv(csv, index=False)
    return [md, csv, _sidecar(stem, table.provenance, [md, csv])]


def save_figure(fig: Any, name: str, figures_dir: str | Path, prov: dict[str, Any]) -> list[Path]:
    """``<name>.png`` (150 dpi) and ``.pdf``, plus ``<name>.provenance.json`` (no footer in the
    image: what made it is in the sidecar)."""
    out = notebook_dir(figures_dir)  # relative to notebooks/, whatever the cwd
    out.mkdir(parents=True, exist_ok=True)
    stem = out / name
    files = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    fig.savefig(files[0], dpi=150, bbox_inches="tight")
    fig.savefig(files[1], bbox_inches="tight")
    return files + [_sidecar(stem, prov, files)]


# ------------------------------------------------------------------ figures
def _style():
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper", font_scale=1.15)  # smallest text ~10 pt
    return plt, sns


def not_run_figure(what: str, missing: Sequence[Any]):
    """The figure saved in place of one none of whose runs exists (so no stale figure survives):
    what it would show, how many runs it needs, and the command that computes them."""
    plt, _ = _style()
    profiles = sorted({_config_dict(c)["profile"] for c in missing})
    fig, ax = plt.subplots(figsize=(7.0, 2.2))
    ax.axis("off")
    ax.text(0.5, 0.5, f"{what}\nNOT RUN: none of its {len(missing)} runs is in the results ledger yet.\n"
            f"Compute them with: {' / '.join(f'make results PROFILE={p}' for p in profiles)}",
            ha="center", va="center", fontsize=11, transform=ax.transAxes)
    return fig


def _not_run_text(ax, text: str = "not run") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=12, color="0.45", transform=ax.transAxes)


def _in_order(records: Sequence[Any], missing: Sequence[Any]) -> list[tuple[Any, dict[str, Any]]]:
    """(record or None, config dict) for every wanted run, in the order asked when known."""
    items = [(r, r.config) for r in records] + [(None, _config_dict(c)) for c in missing]
    order = {h: i for i, h in enumerate(getattr(records, "order", None) or [])}
    return sorted(items, key=lambda it: order.get(it[1]["config_hash"], len(order)))


def _availability_title(n_found: int, missing: Sequence[Any]) -> str:
    return f" [{n_found} of {n_found + len(missing)} runs; the others not run]" if missing else ""


def _panel_grid(plt, n: int, ncols: int = 2, panel: tuple[float, float] = (4.4, 3.4), **kw):
    """Small multiples: ``n`` panels wrapped into rows of ``ncols`` (one row when n <= ncols);
    returns the figure, the n panels and the spare axes of the last row (for a legend)."""
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel[0] * ncols, panel[1] * nrows), squeeze=False, **kw)
    flat = [ax for row in axes for ax in row]
    return fig, flat[:n], flat[n:]


def plot_phase_curves(records: Sequence[Any], methods: Sequence[str] | None = None, title: str = "",
                      missing: Sequence[Any] | None = None):
    """Fig. 4: accuracy (%) after each phase vs number of classes, one panel per N (small
    multiples, two per row; the legend takes the spare slot), seed bands (min-max over seeds), and
    the all-data class-mean reference as a dashed line. A panel (N) with no run says "not run";
    ``missing`` (default ``records.missing``) is counted in the titles."""
    missing = missing_of(records, missing)
    what = "Fig. 4: accuracy after each phase"
    if not records:
        return not_run_figure(what, missing)
    plt, sns = _style()
    df, miss = phases_frame(records), missing_frame(missing)
    present = set(df["label"])
    order = [x for x in ([label_of(m) for m in as_list(methods)] or sorted(present)) if x in present]
    palette = dict(zip(order, sns.color_palette(n_colors=len(order))))
    ref = "reference: NME, all-data class means"
    ns = sorted(set(df["phases"]) | set(miss["phases"]))
    fig, panels, spare = _panel_grid(plt, max(len(ns), 2), sharey=True)  # a lone panel keeps a legend slot
    panels, spare = panels[:len(ns)], panels[len(ns):] + spare
    legend: dict[str, Any] = {}
    for ax, n in zip(panels, ns):
        sub = df[df["phases"] == n]
        n_found, n_miss = sub["config_hash"].nunique(), int((miss["phases"] == n).sum())
        count = f" ({n_found} of {n_found + n_miss} runs)" if n_miss else ""
        ax.set(title=f"N = {n} phases{count}", xlabel="number of classes", ylabel="top-1 accuracy (%)")
        if not len(sub):
            ax.set_xticks([])
            _not_run_text(ax, f"not run\n(0 of {n_miss} runs)")
            continue
        sns.lineplot(data=sub, x="n_classes", y="acc", hue="label", palette=palette,
                     hue_order=[x for x in order if x in set(sub["label"])], marker="o", markersize=4,
                     errorbar=("pi", 100), ax=ax)
        up = sub.groupby(["label", "n_classes"])["acc_upper"].mean().groupby("n_classes").max()
        if up.notna().any():
            ax.plot(up.index, up.values, ls="--", color="0.35", lw=1.2, label=ref)
        handles, labels = ax.get_legend_handles_labels()
        legend.update({lab: h for h, lab in zip(handles, labels) if lab not in legend})
        if ax.get_legend():
            ax.get_legend().remove()
    labels = [x for x in order if x in legend] + [ref] * (ref in legend)
    absent = [label_of(m) for m in as_list(methods) if label_of(m) not in present]
    head = title or "Accuracy after each phase (CNN head; NME for iCaRL)"
    notes = ["bands: min-max over seeds"] + ([f"not run at all: {', '.join(absent)}"] if absent else [])
    if spare:  # the legend in the empty slot of the grid
        for ax in spare[1:]:
            ax.axis("off")
        spare[0].axis("off")
        spare[0].legend([legend[x] for x in labels], labels, loc="center", frameon=False,
                        title="\n".join(notes))
    else:
        fig.legend([legend[x] for x in labels], labels, loc="lower center", ncol=min(len(labels), 3),
                   frameon=False, bbox_to_anchor=(0.5, -0.02), title="; ".join(notes))
    fig.suptitle(head + _availability_title(len(records), missing))
    fig.tight_layout(rect=(0, 0 if spare else 0.12, 1, 1))
    return fig


def tsne_embedding(snap: dict[str, Any], seed: int = 0) -> dict[str, np.ndarray]:
    """2-D t-SNE of one recorded phase: real features, exemplar features and the other classes'
    means embedded jointly (one embedding per panel, as in the paper's Fig. 1)."""
    from sklearn.manifold import TSNE

    shown = set(snap["classes"])
    real = np.asarray(snap["real_features"], dtype=np.float32)
    ex = np.asarray(snap["exemplar_features"], dtype=np.float32).reshape(-1, real.shape[1])
    other = np.asarray([m for m, c in zip(snap["class_means"], snap["mean_labels"]) if c not in shown],
                       dtype=np.float32).reshape(-1, real.shape[1])
    x = np.concatenate([real, ex, other])
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3.5)))
    z = TSNE(n_components=2, init="pca", random_state=seed, perplexity=perplexity).fit_transform(x)
    a, b = len(real), len(real) + len(ex)
    return {"real": z[:a], "real_y": np.asarray(snap["real_labels"]), "ex": z[a:b],
            "ex_y": np.asarray(snap["exemplar_labels"]), "other": z[b:]}


def plot_tsne(snapshot_records: Sequence[Any], seed: int = 0, missing: Sequence[Any] | None = None):
    """Fig. 1: columns = exemplar strategies, rows = early / late phase; light dots = real images,
    dark dots = exemplars (5 classes in colour), grey crosses = the other classes' means. A
    strategy whose snapshot run is missing (``missing``, default ``records.missing``) gets a
    "not run" column."""
    missing = missing_of(snapshot_records, missing)
    if not snapshot_records:
        return not_run_figure("Fig. 1: t-SNE of exemplars and real images", missing)
    plt, sns = _style()
    from matplotlib.lines import Line2D

    cols = _in_order(snapshot_records, missing)
    recs = [r for r, _ in cols if r is not None]
    n_rows = max(len(r.metrics["snapshots"]) for r in recs)
    fig, axes = plt.subplots(n_rows, len(cols), figsize=(3.8 * len(cols), 3.6 * n_rows), squeeze=False)
    colours = sns.color_palette("tab10", 10)
    classes = recs[0].metrics["snapshots"][0]["classes"]
    for j, (r, cfg) in enumerate(cols):
        if r is None:
            for i in range(n_rows):
                axes[i][j].set(xticks=[], yticks=[])
                _not_run_text(axes[i][j])
            axes[0][j].set_title(f"{cfg['exemplars']} exemplars (not run)")
            continue
        for i, snap in enumerate(r.metrics["snapshots"]):
            e = tsne_embedding(snap, seed)
            ax = axes[i][j]
            for k, c in enumerate(snap["classes"]):
                col = colours[k % 10]
                m = e["real_y"] == c
                ax.scatter(e["real"][m, 0], e["real"][m, 1], s=9, color=col, alpha=0.22, lw=0)
                m = e["ex_y"] == c
                ax.scatter(e["ex"][m, 0], e["ex"][m, 1], s=26, color=sns.dark_palette(col, 3)[1],
                           edgecolor="black", lw=0.4)
            if len(e["other"]):
                ax.scatter(e["other"][:, 0], e["other"][:, 1], s=14, marker="x", color="0.6", lw=0.8)
            ax.set(xticks=[], yticks=[], xlabel="t-SNE 1" if i == n_rows - 1 else "")
            if i == 0:
                ax.set_title(f"{r.config['exemplars']} exemplars")
    # row labels on the first column even when that strategy was not run (read from any record)
    for i, snap in enumerate(max((r.metrics["snapshots"] for r in recs), key=len)):
        axes[i][0].set_ylabel(f"phase {snap['phase']} ({snap['n_classes']} classes)\nt-SNE 2")
    handles = [Line2D([], [], ls="", marker="o", color=colours[k % 10], label=f"class {c}")
               for k, c in enumerate(classes)]
    handles += [Line2D([], [], ls="", marker="o", color="0.75", alpha=0.5, label="real images (light)"),
                Line2D([], [], ls="", marker="o", color="0.15", markeredgecolor="black",
                       label="exemplars (dark)"),
                Line2D([], [], ls="", marker="x", color="0.6", label="other classes' means")]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), frameon=False, fontsize=9,
               bbox_to_anchor=(0.5, 0.0))
    fig.suptitle("t-SNE of normalised features: first five classes of the order, exemplars vs real images"
                 + _availability_title(len(recs), missing))
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


def plot_margins(snapshot_records: Sequence[Any], missing: Sequence[Any] | None = None):
    """Distribution of class margins per exemplar strategy: exemplars vs real images (a strategy
    whose snapshot run is missing keeps its slot, marked "not run")."""
    missing = missing_of(snapshot_records, missing)
    if not snapshot_records:
        return not_run_figure("Class margins of exemplars vs real images", missing)
    plt, sns = _style()
    df = margins_frame(snapshot_records)
    order = list(dict.fromkeys(cfg["exemplars"] for _, cfg in _in_order(snapshot_records, missing)))
    absent = [_config_dict(c)["exemplars"] for c in missing]
    stages = list(dict.fromkeys(df["stage"]))
    fig, axes = plt.subplots(1, len(stages), figsize=(5.2 * len(stages), 4.2), squeeze=False, sharey=True)
    for ax, st in zip(axes[0], stages):
        sns.boxplot(data=df[df["stage"] == st], x="exemplars", y="margin", hue="kind", order=order,
                    hue_order=["real", "exemplar"], showfliers=False, ax=ax, legend=ax is axes[0][-1])
        ax.axhline(0, color="0.3", lw=0.8, ls=":")
        for x in absent:
            ax.text(order.index(x), 0.5, "not run", ha="center", va="center", color="0.45",
                    transform=ax.get_xaxis_transform())
        ax.set(title=st, xlabel="exemplar strategy",
               ylabel="class margin\ncos(own mean) − max cos(other mean)")
    sns.move_legend(axes[0][-1], "upper left", bbox_to_anchor=(1.01, 1.0), title="points", frameon=False)
    fig.suptitle("Are exemplars near class boundaries? (lower margin = nearer; whiskers 1.5 IQR)\n"
                 + _availability_title(len(snapshot_records), missing).strip())
    fig.tight_layout()
    return fig


def _mosaic(x: np.ndarray, y: np.ndarray, classes: Sequence[int], per_class: int) -> np.ndarray:
    """(M, 3, H, W) uint8 -> one (rows*H', per_class*W', 3) image, a row per class, 1-px gaps."""
    h, w = x.shape[2:]
    out = np.full((len(classes) * (h + 1), per_class * (w + 1), 3), 255, dtype=np.uint8)
    for i, c in enumerate(classes):
        for k, img in enumerate(x[y == c][:per_class]):
            out[i * (h + 1):i * (h + 1) + h, k * (w + 1):k * (w + 1) + w] = img.transpose(1, 2, 0)
    return out


def plot_exemplar_grid(snapshot_records: Sequence[Any], stage: int = 0, per_class: int = 8,
                       missing: Sequence[Any] | None = None):
    """Exemplar images of the first five classes per strategy at a recorded phase (``stage`` 0 =
    early, -1 = late); with herding and mnemonics both present (and mnemonics initialised from
    herding) also |mnemonics − herding| scaled to its maximum: what the bilevel optimisation changed.
    A strategy whose snapshot run is missing gets a "not run" panel."""
    missing = missing_of(snapshot_records, missing)
    if not snapshot_records:
        return not_run_figure("Exemplar images per strategy", missing)
    plt, _ = _style()
    from .snapshots import decode_pixels

    panels = []
    for r, cfg in _in_order(snapshot_records, missing):
        if r is None:
            panels.append((f"{cfg['exemplars']} (not run)", None, None, None, cfg))
            continue
        snap = r.metrics["snapshots"][stage]
        x, y = decode_pixels(snap["exemplar_pixels"])
        panels.append((f"{r.config['exemplars']}", x, y, snap, r.config))
    by = {p[0]: p for p in panels if p[1] is not None}
    first = next(p for p in panels if p[1] is not None)
    classes = first[3]["classes"]
    if "herding" in by and "mnemonics" in by and by["mnemonics"][4]["mnemonics"]["init"] == "herding" \
            and by["herding"][1].shape == by["mnemonics"][1].shape:
        diff = np.abs(by["mnemonics"][1].astype(np.float32) - by["herding"][1].astype(np.float32))
        peak = float(diff.max())
        scaled = (diff * (255.0 / peak) if peak > 0 else diff).round().astype(np.uint8)
        panels.append((f"|mnemonics − herding|, scaled\n(max difference {peak:.0f}/255)", scaled,
                       by["herding"][2], by["herding"][3], None))
    k = min(per_class, max(int((p[2] == c).sum()) for p in panels if p[1] is not None for c in classes))
    fig, axes, spare = _panel_grid(plt, len(panels), ncols=2, panel=(0.55 * k + 1.0, 0.62 * len(classes) + 1.1))
    for ax in spare:
        ax.axis("off")
    for ax, (title, x, y, snap, _) in zip(axes, panels):
        ax.grid(False)
        ax.set_xticks([])
        ax.set_title(title, fontsize=10)
        if x is None:
            ax.set_yticks([])
            _not_run_text(ax)
            continue
        ax.imshow(_mosaic(x, y, classes, k), interpolation="nearest")
        ax.set_yticks([(i + 0.5) * (x.shape[2] + 1) for i in range(len(classes))],
                      [f"class {c}" for c in classes])
        ax.set_xlabel(f"first {k} exemplars per class")
    fig.suptitle(f"Exemplars after phase {first[3]['phase']} (first five classes of the order)"
                 + _availability_title(len(snapshot_records), missing))
    fig.tight_layout()
    return fig


def plot_sweep(records: Sequence[Any], value: str = "aia_cnn", missing: Sequence[Any] | None = None):
    """Heatmaps of AIA over alpha x beta1, one panel per K ("not run" in a cell with no run)."""
    missing = missing_of(records, missing)
    if not records:
        return not_run_figure("Mnemonics sensitivity sweep", missing)
    plt, sns = _style()
    df, wanted = _wanted_frame(records, missing)
    wanted = wanted.merge(df[["config_hash", value]], on="config_hash", how="left")
    wanted[value] = wanted[value].astype(float)
    ks = sorted(wanted["inner_steps"].unique())
    fig, axes = plt.subplots(1, len(ks), figsize=(4.4 * len(ks), 3.6), squeeze=False)
    vmin, vmax = df[value].min(), df[value].max()
    for ax, k in zip(axes[0], ks):
        piv = wanted[wanted["inner_steps"] == k].pivot_table(index="inner_lr", columns="outer_lr",
                                                            values=value, dropna=False)
        sns.heatmap(piv, annot=True, fmt=".2f", cmap="viridis", vmin=vmin, vmax=vmax, ax=ax,
                    cbar_kws={"label": f"{value} (%)"})
        for (i, j), v in np.ndenumerate(piv.to_numpy()):
            if not np.isfinite(v):
                ax.text(j + 0.5, i + 0.5, "not run", ha="center", va="center", fontsize=9, color="0.4")
        ax.set(title=f"K = {k} inner steps", xlabel="beta1 (exemplar lr)", ylabel="alpha (inner lr)")
    fig.suptitle("Mnemonics sensitivity: average incremental accuracy"
                 + _availability_title(len(records), missing))
    fig.tight_layout()
    return fig
