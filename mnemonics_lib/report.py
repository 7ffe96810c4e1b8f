"""Tables (Markdown + CSV) and seaborn figures (PNG + PDF) from ledger records, each saved with
its provenance: a footer (figures) or a footer line (tables) and a sidecar JSON listing the config
hashes, commits, devices, profile and dataset behind it.

Inputs are :class:`mnemonics_lib.results.RunRecord` lists as returned by
:func:`mnemonics_lib.study.run_configs` / :func:`~mnemonics_lib.study.snapshot_records`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from . import paper_numbers
from .study import as_list, spec_of

HEADLINE_HEAD = {"icarl": "nme"}  # iCaRL's classifier is NME; every other method's is the CNN head
_TAG_LEGEND = ("Paper-number tags: [code] read in the authors' code; [3p] quoted by a third party; "
               "[recalled] widely cited, not confirmed against the PDF.")
_DATASET_NOTES = {
    "caltech100": "caltech100 = 32x32 Caltech-101 without Faces_easy (100 classes, ~58 train images "
                  "per class, imbalanced), the offline stand-in for CIFAR-100",
    "synthetic": "synthetic = the smoke-test set (20 classes of noisy colour templates); proves the "
                 "plumbing, says nothing about accuracy",
    "cifar10": "cifar10 = the offline CIFAR-10 copy (decoded from JPEG); no paper numbers exist for it",
}
_PROFILE_NOTES = {
    "smoke": "smoke profile (ResNet-8/8, 4+2 epochs)",
    "quick": "quick profile (ResNet-32, 30 epochs phase 0 / 12 later, M=30 mnemonics iterations)",
    "paper": "paper profile (ResNet-32, 160 epochs per phase, the paper's schedule)",
}


def label_of(spec: str) -> str:
    return paper_numbers.METHOD_LABELS.get(spec, spec)


def headline_head(method: str) -> str:
    return HEADLINE_HEAD.get(method, "cnn")


# ------------------------------------------------------------------ frames
def _commit(env: dict[str, Any]) -> str:
    c = (env.get("git_commit") or "unknown")[:8]
    return c + ("+dirty" if env.get("git_dirty") else "")


def runs_frame(records: Sequence[Any]) -> pd.DataFrame:
    """One row per run: config fields, run spec, run-level metrics, provenance."""
    rows = []
    for r in records:
        c, m = r.config, r.metrics
        rows.append({
            "spec": spec_of(c), "dataset": c["dataset"], "method": c["method"], "exemplars": c["exemplars"],
            "phases": c["phases"], "seed": c["seed"], "class_order_seed": c["class_order_seed"],
            "profile": c["profile"], "memory_per_class": c["memory_per_class"],
            "inner_lr": c["mnemonics"]["inner_lr"], "outer_lr": c["mnemonics"]["outer_lr"],
            "inner_steps": c["mnemonics"]["inner_steps"],
            **{k: float(m[k]) if m.get(k) is not None else math.nan
               for k in ("aia_cnn", "aia_nme", "last_cnn", "last_nme", "forgetting_cnn", "forgetting_nme",
                         "wall_s_total")},
            "config_hash": c["config_hash"], "commit": _commit(r.env), "device": r.env.get("device"),
            "run_id": r.run_id,
        })
    df = pd.DataFrame(rows)
    if len(df):
        df["aia"] = [row[f"aia_{headline_head(row['method'])}"] for _, row in df.iterrows()]
        df["forgetting"] = [row[f"forgetting_{headline_head(row['method'])}"] for _, row in df.iterrows()]
    return df


def phases_frame(records: Sequence[Any]) -> pd.DataFrame:
    """One row per (run, phase): accuracies after that phase (%)."""
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
    return pd.DataFrame(rows)


def provenance(records: Sequence[Any], *, artifact: str, profile: str, dataset: str,
               **extra: Any) -> dict[str, Any]:
    """What a saved table or figure was made from (the sidecar JSON's content)."""
    envs = [r.env for r in records]
    return {
        "artifact": artifact, "dataset": dataset, "profile": profile, "n_runs": len(records),
        "config_hashes": sorted({r.config["config_hash"] for r in records}),
        "commits": sorted({_commit(e) for e in envs}),
        "devices": sorted({str(e.get("device")) for e in envs}),
        "torch": sorted({str(e.get("torch")) for e in envs}),
        "run_dirs": sorted(str(r.path) for r in records),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def footer(prov: dict[str, Any]) -> str:
    return (f"{prov['artifact']} | dataset {prov['dataset']} | profile {prov['profile']} | "
            f"{prov['n_runs']} runs (hashes in the sidecar .json) | commit {', '.join(prov['commits'])} | "
            f"device {', '.join(prov['devices'])}")


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


def _caption(what: str, dataset: str, profile: str, records: Sequence[Any]) -> str:
    ds = _DATASET_NOTES.get(dataset, dataset)
    seeds = sorted({r.config["seed"] for r in records})
    base = sorted({str(r.config["base_classes"] or "half the") for r in records})
    mem = sorted({(r.config["memory_mode"], r.config["memory_per_class"], r.config["memory_total"])
                  for r in records})
    mem_txt = ", ".join(f"{m} exemplars/class" if mode == "per_class" else f"{t} exemplars in total"
                        for mode, m, t in mem)
    return (f"{what} Mean ± std over seeds {seeds} (a seed fixes the class order and the training). "
            f"Ours: {ds}; {_PROFILE_NOTES.get(profile, profile)}; {'/'.join(base)} classes in phase 0; "
            f"memory: {mem_txt}.")


def table1(records: Sequence[Any], *, dataset: str, profile: str) -> Table:
    """Table 1: AIA (%) per method and N, the paper's number (tag) and the difference beside ours."""
    df = runs_frame(records)
    g = _group(df, ["spec", "method", "phases"], "aia")
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
            row[f"N={n} ours"] = _fmt(r["aia_mean"], r["aia_std"], int(r["n_seeds"]))
            row[f"N={n} paper"] = f"{r['paper']:.2f} {r['paper_tag']}" if np.isfinite(r["paper"]) else "—"
            row[f"N={n} Δ"] = f"{r['delta']:+.2f}" if np.isfinite(r["delta"]) else "—"
        row["config hashes"] = " ".join(sub["config_hashes"])
        row["commit"] = ",".join(sorted(set(sub["commit"])))
        row["device"] = ",".join(sorted(set(sub["device"])))
        rows.append(row)
    pds = paper_numbers.PAPER_DATASET.get(dataset)
    what = ("Table 1: average incremental accuracy (%, phase 0 included; CNN head, NME for iCaRL)."
            + (f" Paper numbers are {pds} (arXiv v6); Δ = ours − paper." if pds else " No paper numbers."))
    if dataset != pds:
        what += " Different dataset: Δ is context, not a reproduction verdict."
    cap = _caption(what, dataset, profile, records) + " " + _TAG_LEGEND
    return Table(f"table1_{dataset}_{profile}", long, pd.DataFrame(rows), cap,
                 provenance(records, artifact="table1", profile=profile, dataset=dataset))


def ablation_table(records: Sequence[Any], *, dataset: str, profile: str) -> Table:
    """Exemplar type under each method: AIA (CNN, NME), forgetting, Δ vs herding of the same method."""
    df = runs_frame(records)
    keys = ["spec", "method", "exemplars", "phases"]
    long = None
    for value in ("aia", "aia_cnn", "aia_nme", "forgetting_cnn", "last_cnn"):
        g = _group(df, keys, value).rename(
            columns={"mean": f"{value}_mean", "std": f"{value}_std", "count": "n_seeds"})
        long = g if long is None else long.merge(g[keys + [f"{value}_mean", f"{value}_std"]], on=keys)
    base = long[long["spec"] == long["method"]].set_index(["method", "phases"])["aia_mean"]
    long["delta_vs_herding"] = [r["aia_mean"] - base.get((r["method"], r["phases"]), math.nan)
                                for _, r in long.iterrows()]
    long["dataset"], long["profile"] = dataset, profile
    wide = pd.DataFrame({
        "run spec": long["spec"], "N": long["phases"],
        "AIA CNN": [_fmt(m, s, n) for m, s, n in
                    zip(long["aia_cnn_mean"], long["aia_cnn_std"], long["n_seeds"])],
        "AIA NME": [_fmt(m, s, n) for m, s, n in
                    zip(long["aia_nme_mean"], long["aia_nme_std"], long["n_seeds"])],
        "forgetting CNN": [_fmt(m, s, n) for m, s, n in
                           zip(long["forgetting_cnn_mean"], long["forgetting_cnn_std"], long["n_seeds"])],
        "Δ AIA vs herding": [f"{d:+.2f} ({headline_head(m).upper()})" if np.isfinite(d) else "—"
                             for d, m in zip(long["delta_vs_herding"], long["method"])],
        "config hashes": long["config_hashes"], "commit": long["commit"], "device": long["device"],
    })
    cap = _caption("Exemplar ablation: random vs herding vs mnemonics (paper §3) vs the authors' released "
                   "procedure (authors_code), under each method; +flags are the deconfounding runs "
                   "(no_adjust_old: old exemplars not adjusted; weight_transfer: frozen conv + learnable "
                   "scales; balanced_finetune: class-balanced fine-tuning, default only for mnemonics). "
                   "Δ: AIA of the method's own classifier (CNN; NME for iCaRL) minus the same method with "
                   "herding. The paper's ablation numbers were not recovered, so there is no paper column.",
                   dataset, profile, records)
    return Table(f"ablation_exemplars_{dataset}_{profile}", long, wide, cap,
                 provenance(records, artifact="ablation_exemplars", profile=profile, dataset=dataset))


def forgetting_table(records: Sequence[Any], *, dataset: str, profile: str) -> Table:
    """AIA and forgetting of both heads beside the authors' README rows ('LwF' = CNN, 'iCaRL' = NME
    of the same run; 'w/ mnemonics' matched to our mnemonics and authors_code exemplars)."""
    df = runs_frame(records)
    rows = []
    for head in ("cnn", "nme"):
        for metric in ("aia", "forgetting"):
            g = _group(df, ["spec", "exemplars", "phases"], f"{metric}_{head}")
            for _, r in g.iterrows():
                mn = r["exemplars"] in ("mnemonics", "authors_code")
                row_name = paper_numbers.readme_row(head, mn)
                num = paper_numbers.AUTHORS_README.get((row_name, metric, int(r["phases"])))
                rows.append({"spec": r["spec"], "head": head, "metric": metric, "phases": int(r["phases"]),
                             "mean": r["mean"], "std": r["std"], "n_seeds": int(r["count"]),
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
            row[key] = _fmt(r["mean"], r["std"], r["n_seeds"]) + paper
        row["config hashes"] = sub["config_hashes"].iloc[0]
        row["commit"], row["device"] = sub["commit"].iloc[0], sub["device"].iloc[0]
        wide_rows.append(row)
    cap = _caption("Average incremental accuracy (AIA) and forgetting F (accuracy on the phase-0 classes "
                   "after phase 0 minus after the last phase; lower is better), %, for the CNN and the NME "
                   "head of the same runs, beside the authors' code README (CIFAR-100) [code]: its 'LwF' "
                   "rows are the CNN head and its 'iCaRL' rows the NME head of one run; 'w/ mnemonics' is "
                   "matched to our mnemonics and authors_code exemplars.", dataset, profile, records)
    return Table(f"forgetting_{dataset}_{profile}", long, pd.DataFrame(wide_rows), cap,
                 provenance(records, artifact="forgetting", profile=profile, dataset=dataset))


def sweep_table(records: Sequence[Any], *, dataset: str, profile: str) -> Table:
    df = runs_frame(records)
    long = df[["inner_steps", "inner_lr", "outer_lr", "aia_cnn", "aia_nme", "forgetting_cnn", "wall_s_total",
               "config_hash", "commit", "device"]].sort_values(["inner_steps", "inner_lr", "outer_lr"])
    long = long.assign(dataset=dataset, profile=profile, phases=df["phases"].iloc[0] if len(df) else None)
    wide = long.rename(columns={"inner_steps": "K", "inner_lr": "alpha", "outer_lr": "beta1"}).round(3)
    cap = _caption("Mnemonics sensitivity sweep (LUCIR w/ mnemonics, one seed): AIA (%) over the inner "
                   "learning rate alpha, the exemplar learning rate beta1 and the unrolled steps K.",
                   dataset, profile, records)
    return Table(f"sweep_mnemonics_{dataset}_{profile}", long, wide, cap,
                 provenance(records, artifact="sweep_mnemonics", profile=profile, dataset=dataset))


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
    return pd.DataFrame(rows)


def margin_table(snapshot_records: Sequence[Any], *, dataset: str, profile: str) -> Table:
    """The numeric answer to 'exemplars lie on class boundaries': exemplar vs real-data margins."""
    df = margins_frame(snapshot_records)
    g = df.groupby(["exemplars", "stage", "kind"], sort=False)["margin"]
    long = g.agg(["median", "mean", "count"]).reset_index()
    long["frac_below_zero"] = g.apply(lambda s: float((s < 0).mean())).values
    real_med = long[long["kind"] == "real"].set_index(["exemplars", "stage"])["median"]
    long["median_minus_real_median"] = [r["median"] - real_med.get((r["exemplars"], r["stage"]), math.nan)
                                        for _, r in long.iterrows()]
    long["dataset"], long["profile"] = dataset, profile
    cap = _caption("Class margins (cosine to the own class mean minus the largest cosine to another class "
                   "mean, features of the same model, class means from all real training images): "
                   "exemplars of every seen class vs up to 60 real images per class. A lower exemplar "
                   "median than the real median means exemplars sit nearer the class boundaries.",
                   dataset, profile, snapshot_records)
    return Table(f"exemplar_margins_{dataset}_{profile}", long, long.round(4), cap,
                 provenance(snapshot_records, artifact="exemplar_margins", profile=profile, dataset=dataset))


def to_markdown(df: pd.DataFrame) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            v = "—" if not np.isfinite(v) else f"{v:.4g}"
        return str(v).replace("|", "\\|").replace("\n", " ")

    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _sidecar(stem: Path, prov: dict[str, Any], files: list[Path]) -> Path:
    side = stem.with_suffix(".json")
    side.write_text(json.dumps({**prov, "files": [f.name for f in files]}, indent=2, sort_keys=True) + "\n")
    return side


def save_table(table: Table, figures_dir: str | Path) -> list[Path]:
    """``<name>.md`` (caption, table, provenance footer), ``<name>.csv`` (tidy) and ``<name>.json``."""
    out = Path(figures_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / table.name
    md, csv = stem.with_suffix(".md"), stem.with_suffix(".csv")
    md.write_text(f"{table.caption}\n\n{to_markdown(table.wide)}\n\n"
                  f"_Provenance: {footer(table.provenance)}_\n")
    table.long.to_csv(csv, index=False)
    return [md, csv, _sidecar(stem, table.provenance, [md, csv])]


def save_figure(fig: Any, name: str, figures_dir: str | Path, prov: dict[str, Any]) -> list[Path]:
    """``<name>.png`` and ``.pdf`` with a provenance footer, plus ``<name>.json``."""
    out = Path(figures_dir)
    out.mkdir(parents=True, exist_ok=True)
    # below everything already drawn (legends may sit under the axes), whatever the layout
    bbox = fig.get_tightbbox(fig.canvas.get_renderer())
    fig.text(bbox.x0 / fig.get_figwidth(), (bbox.y0 - 0.06) / fig.get_figheight(), footer(prov),
             fontsize=6, color="0.4", ha="left", va="top")
    stem = out / name
    files = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    fig.savefig(files[0], dpi=150, bbox_inches="tight")
    fig.savefig(files[1], bbox_inches="tight")
    return files + [_sidecar(stem, prov, files)]


# ------------------------------------------------------------------ figures
def _style():
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper", font_scale=1.1)
    return plt, sns


def plot_phase_curves(records: Sequence[Any], methods: Sequence[str] | None = None, title: str = ""):
    """Fig. 4: accuracy (%) after each phase vs number of classes, one panel per N, seed bands
    (min-max over seeds), and the all-data class-mean reference as a dashed line."""
    plt, sns = _style()
    df = phases_frame(records)
    order = [label_of(m) for m in as_list(methods)] or sorted(df["label"].unique())
    ns = sorted(df["phases"].unique())
    fig, axes = plt.subplots(1, len(ns), figsize=(4.6 * len(ns), 3.8), squeeze=False, sharey=True)
    for ax, n in zip(axes[0], ns):
        sub = df[df["phases"] == n]
        sns.lineplot(data=sub, x="n_classes", y="acc", hue="label", hue_order=order, marker="o",
                     errorbar=("pi", 100), ax=ax, legend=ax is axes[0][0])
        up = sub.groupby(["label", "n_classes"])["acc_upper"].mean().groupby("n_classes").max()
        if up.notna().any():
            ax.plot(up.index, up.values, ls="--", color="0.35", lw=1.2,
                    label="reference: NME with all-data class means (best model)")
        ax.set(title=f"N = {n} phases", xlabel="number of classes", ylabel="top-1 accuracy (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if up.notna().any() and "reference" not in " ".join(labels):
        handles += axes[0][-1].get_lines()[-1:]
        labels += ["reference: NME with all-data class means (best model)"]
    if axes[0][0].get_legend():
        axes[0][0].get_legend().remove()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 3), frameon=False,
               bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(title or "Accuracy after each phase (CNN head; NME for iCaRL); bands: min-max over seeds")
    fig.tight_layout(rect=(0, 0.1 + 0.04 * (len(labels) > 3), 1, 1))
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


def plot_tsne(snapshot_records: Sequence[Any], seed: int = 0):
    """Fig. 1: columns = exemplar strategies, rows = early / late phase; light dots = real images,
    dark dots = exemplars (5 classes in colour), grey crosses = the other classes' means."""
    plt, sns = _style()
    from matplotlib.lines import Line2D

    recs = list(snapshot_records)
    n_rows = max(len(r.metrics["snapshots"]) for r in recs)
    fig, axes = plt.subplots(n_rows, len(recs), figsize=(3.8 * len(recs), 3.6 * n_rows), squeeze=False)
    colours = sns.color_palette("tab10", 10)
    classes = recs[0].metrics["snapshots"][0]["classes"]
    for j, r in enumerate(recs):
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
            ax.set(xticks=[], yticks=[], xlabel="t-SNE 1" if i == n_rows - 1 else "",
                   ylabel=f"phase {snap['phase']} ({snap['n_classes']} classes)\nt-SNE 2" if j == 0 else "")
            if i == 0:
                ax.set_title(f"{r.config['exemplars']} exemplars")
    handles = [Line2D([], [], ls="", marker="o", color=colours[k % 10], label=f"class {c}")
               for k, c in enumerate(classes)]
    handles += [Line2D([], [], ls="", marker="o", color="0.75", alpha=0.5, label="real images (light)"),
                Line2D([], [], ls="", marker="o", color="0.15", markeredgecolor="black",
                       label="exemplars (dark)"),
                Line2D([], [], ls="", marker="x", color="0.6", label="other classes' means")]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=8,
               bbox_to_anchor=(0.5, 0.0))
    fig.suptitle("t-SNE of normalised features: first five classes of the order, exemplars vs real images")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def plot_margins(snapshot_records: Sequence[Any]):
    """Distribution of class margins per exemplar strategy: exemplars vs real images."""
    plt, sns = _style()
    df = margins_frame(snapshot_records)
    stages = list(dict.fromkeys(df["stage"]))
    fig, axes = plt.subplots(1, len(stages), figsize=(5.2 * len(stages), 3.8), squeeze=False, sharey=True)
    for ax, st in zip(axes[0], stages):
        sns.boxplot(data=df[df["stage"] == st], x="exemplars", y="margin", hue="kind",
                    hue_order=["real", "exemplar"], showfliers=False, ax=ax, legend=ax is axes[0][-1])
        ax.axhline(0, color="0.3", lw=0.8, ls=":")
        ax.set(title=st, xlabel="exemplar strategy",
               ylabel="margin: cos(own mean) − max cos(other mean)")
    sns.move_legend(axes[0][-1], "upper left", bbox_to_anchor=(1.01, 1.0), title="points", frameon=False)
    fig.suptitle("Are exemplars near class boundaries? (lower margin = nearer; whiskers 1.5 IQR)")
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


def plot_exemplar_grid(snapshot_records: Sequence[Any], stage: int = 0, per_class: int = 8):
    """Exemplar images of the first five classes per strategy at a recorded phase (``stage`` 0 =
    early, -1 = late); with herding and mnemonics both present (and mnemonics initialised from
    herding) also |mnemonics − herding| scaled to its maximum: what the bilevel optimisation changed."""
    plt, _ = _style()
    from .study import decode_pixels

    panels = []
    for r in snapshot_records:
        snap = r.metrics["snapshots"][stage]
        x, y = decode_pixels(snap["exemplar_pixels"])
        panels.append((f"{r.config['exemplars']}", x, y, snap, r.config))
    by = {p[0]: p for p in panels}
    classes = panels[0][3]["classes"]
    if "herding" in by and "mnemonics" in by and by["mnemonics"][4]["mnemonics"]["init"] == "herding" \
            and by["herding"][1].shape == by["mnemonics"][1].shape:
        diff = np.abs(by["mnemonics"][1].astype(np.float32) - by["herding"][1].astype(np.float32))
        peak = float(diff.max())
        scaled = (diff * (255.0 / peak) if peak > 0 else diff).round().astype(np.uint8)
        panels.append((f"|mnemonics − herding|, scaled\n(max difference {peak:.0f}/255)", scaled,
                       by["herding"][2], by["herding"][3], None))
    k = min(per_class, max(int((p[2] == c).sum()) for p in panels for c in classes))
    size = (0.55 * k * len(panels) + 1.2, 0.62 * len(classes) + 1.2)
    fig, axes = plt.subplots(1, len(panels), figsize=size, squeeze=False)
    for ax, (title, x, y, snap, _) in zip(axes[0], panels):
        ax.imshow(_mosaic(x, y, classes, k), interpolation="nearest")
        ax.grid(False)
        ax.set_xticks([])
        ax.set_yticks([(i + 0.5) * (x.shape[2] + 1) for i in range(len(classes))],
                      [f"class {c}" for c in classes])
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(f"first {k} exemplars per class")
    fig.suptitle(f"Exemplars after phase {panels[0][3]['phase']} (first five classes of the order)")
    fig.tight_layout()
    return fig


def plot_sweep(records: Sequence[Any], value: str = "aia_cnn"):
    """Heatmaps of AIA over alpha x beta1, one panel per K."""
    plt, sns = _style()
    df = runs_frame(records)
    ks = sorted(df["inner_steps"].unique())
    fig, axes = plt.subplots(1, len(ks), figsize=(4.4 * len(ks), 3.6), squeeze=False)
    vmin, vmax = df[value].min(), df[value].max()
    for ax, k in zip(axes[0], ks):
        piv = df[df["inner_steps"] == k].pivot_table(index="inner_lr", columns="outer_lr", values=value)
        sns.heatmap(piv, annot=True, fmt=".2f", cmap="viridis", vmin=vmin, vmax=vmax, ax=ax,
                    cbar_kws={"label": f"{value} (%)"})
        ax.set(title=f"K = {k} inner steps", xlabel="beta1 (exemplar lr)", ylabel="alpha (inner lr)")
    fig.suptitle("Mnemonics sensitivity: average incremental accuracy")
    fig.tight_layout()
    return fig
