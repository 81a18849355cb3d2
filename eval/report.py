"""The comparison's report: metrics.json, report.md (one table and how to read it) and PNG plots."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lcm.io import atomic_path, write_json

# the report's names of the token baseline's rows: sampled, greedy, Soft Thinking, Soft Thinking with noise
TOKEN, GREEDY, SOFT, SOFT_NOISY = "token Llama", "token Llama (greedy)", "Soft Thinking", "Soft Thinking + noise"
TOKEN_ROWS = {TOKEN: "sample", GREEDY: "greedy", SOFT: "soft", SOFT_NOISY: "soft_noisy"}
# the controls' rows (`lcm.eval.controls`)
FOLLOWER, BANK_RESTRICTED = "encoder follower (0 parameters)", "token Llama restricted to the bank"


def write_report(out: Path, report: dict, histograms: dict[str, list[float]]) -> None:
    """metrics.json (strict JSON), the plots and report.md into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", finite_or_null(report))
    plots(out, report, histograms)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(markdown(report), encoding="utf-8")


def finite_or_null(obj):
    """NaN/inf -> None, so metrics.json is strict JSON (n/a metrics, e.g. a rank of fewer than 2 states)."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite_or_null(v) for v in obj]
    return obj


COLUMNS = (("accuracy", "acc [95% CI]", ".3f"), ("pass_at_k", "pass@k", ".3f"), ("answered", "answered", ".3f"),
           ("stop_end_of_text", "stop: end", ".2f"), ("stop_repetition", "stop: repeat", ".2f"),
           ("stop_max_steps", "stop: max", ".2f"), ("rouge_l", "ROUGE-L", ".3f"),
           ("forking_share", "forking share", ".3f"), ("entropy_mean", "mean H", ".3f"),
           ("step_entropy", "H/step", ".3f"), ("effective_rank_step_states", "ER step states", ".2f"),
           ("erv_step_states", "ERV", ".3f"),
           ("effective_rank_hidden", "ER hidden", ".2f"), ("effective_rank_steps", "ER steps", ".2f"),
           ("distinct_2", "distinct-2", ".3f"), ("self_bleu", "self-BLEU", ".1f"), ("vendi", "Vendi", ".2f"),
           ("steps_per_solution", "steps", ".1f"), ("seconds_per_problem", "s/problem", ".3f"),
           ("seconds_per_sample", "s/sample", ".3f"), ("seconds_per_correct_sample", "s/correct", ".3f"),
           ("seconds_per_step", "s/step", ".4f"), ("time_per_step_vs_token", "step time vs token", ".2f"),
           ("time_per_problem_vs_token", "problem time vs token", ".2f"),
           ("forward_passes_per_step", "fwd/step", ".1f"), ("denoiser_evals_per_step", "denoiser/step", ".0f"),
           ("soft_token_share", "soft share", ".2f"), ("train_flops", "train FLOPs", ".2e"),
           ("train_flops_encoder", "of which encoder", ".2e"), ("train_seconds", "train s", ".0f"))


def cell(r: dict, key: str, fmt: str) -> str:
    """One table cell: the value (accuracy with its bootstrap CI when there is one), or n/a."""
    value = r.get(key)
    if not (isinstance(value, float) and np.isfinite(value)):
        return "n/a"
    ci, std = r.get(f"{key}_ci"), r.get(f"{key}_std")
    text = f"{value:{fmt}}" + (f" ± {std:{fmt}}" if isinstance(std, float) and np.isfinite(std) else "")
    return text + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci and None not in ci else "")


def table(report: dict) -> list[str]:
    head = "| system | params | " + " | ".join(c[1] for c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for name, r in report["results"].items():
        cells = [cell(r, key, fmt) for key, _, fmt in COLUMNS]
        lines.append(f"| {name} | {report['systems'][name]['params'] / 1e6:.2f}M | " + " | ".join(cells) + " |")
    return lines


def markdown(report: dict) -> str:
    r, k = report["results"], report["k"]
    chance = report["chance_accuracy"]
    lines = [f"# Concept vs token: {report['name']}", "",
             f"{report['problems']} held-out problems, k = {k} samples per problem, "
             + (f"seeds {', '.join(map(str, report['seeds']))} (every number a mean over seeds; acc ± its std over "
                "seeds; per-seed results in metrics.json `by_seed`), " if len(report.get("seeds", [])) > 1
                else f"seed {report['seed']}, ")
             + f"device {report['device']}." + (f" Chance accuracy (majority answer): {chance:.3f}." if chance else "")
             + (f" Wall time of this compare: {report['wall_seconds'] / 60:.1f} min (runs reused from an earlier "
                "invocation cost it nothing; `train s` is each row's own fit time)." if "wall_seconds" in report else ""),
             "", *table(report), "",
             "- acc: mean over all samples (unbiased pass@1), with a 95% percentile-bootstrap CI over problems; "
             "pass@k with the unbiased estimator over k samples.",
             f"- Controls: {FOLLOWER} walks the prompt from the entity's fact to the fact closest in the frozen "
             "encoder's space, never revisiting, and answers from the first answer-bearing fact (no trained "
             f"parameter: a result it matches is not a result); {BANK_RESTRICTED} takes, at each step, the line of "
             "the first concept system's bank with the highest log-likelihood under the token model (the same closed "
             "set as retrieval; on the first `controls.bank_problems` problems only: it scores every bank line); "
             "`..., read out by the decoder` (with `controls.decoder`) is the first concept system with each step "
             "written by a trained sentence decoder instead of retrieved (open vocabulary: a sentence no bank holds "
             "can come out).",
             "- answered: share of samples with an answer line (`#### ...`). stop: end / repeat / max: shares of "
             "samples that stopped at end-of-text (token models: <eos>), on a loop of steps, or at the step cap "
             "(token models: max_new_tokens).",
             f"- {GREEDY} and {SOFT} (the official code's defaults, no noise: its evaluation draws one sample) give "
             f"one solution per problem, so their pass@k is their pass@1 and they have no diversity columns; "
             f"{SOFT_NOISY} perturbs the concept token (Gumbel-softmax by default) and draws k.",
             f"- forking share: share of generated tokens at or above one fixed threshold, the {TOKEN}'s "
             f"80th-percentile entropy ({r[TOKEN]['forking_threshold']:.3f} nats). Concept models have no token "
             "softmax in the reasoning loop: n/a.",
             "- H/step: entropy per reasoning step in nats -- concept models: the step policy softmax(cos/tau) over "
             "the sentence bank at each prediction (tau fitted on validation); token models: the sum of token "
             "entropies over each line. ER step states / ERV: effective rank (and VERL's ERV) of one state per step "
             "(a concept model's state per prediction; a token model's state at each line's last token): matched "
             "units.",
             "- ER hidden: effective rank of the final-layer states over one solution's generated positions (tokens "
             "for the token model, concepts for concept models -- different position counts, see hidden_positions); "
             "ER steps: of the step-embedding trajectory.",
             "- distinct-2: unique / total bigrams pooled over the k solutions of a problem; self-BLEU 0-100 (lower "
             "= more diverse); Vendi of the k solutions' mean step embeddings, unit-normalized and centred (1 to k - 1).",
             "- Time: the k samples of a problem run as one batch on the same device (Soft Thinking: one sample, "
             "batch 1); s/correct = wall time per correct sample. fwd/step: main-network evaluations per reasoning "
             "step -- one new position per token for the token model (KV cache), the whole concept sequence per call for "
             "concept models (no KV cache); denoiser/step: the diffusion model's DDIM denoiser passes (CFG doubles "
             "the rows). Retrieval and the encoder are in the wall time, not in the counts.",
             "- soft share: share of Soft Thinking tokens produced as probability-weighted embeddings before a cold "
             "stop.",
             "- train FLOPs: the run's training compute counted from the sequences it read (3x forward: 2 FLOPs per "
             "matmul weight per position plus causal attention), the frozen encoder's forward passes over the "
             "corpus's unique sentences included for concept systems (`of which encoder`); the token baseline's "
             "rows share its run (`lcm.train.cost`).", ""]
    lines += lr_sweep_lines(report)
    for name in (n for n in TOKEN_ROWS if n in r):
        top = ", ".join(f"{t} ({c})" for t, c in r[name]["top_forking_tokens"])
        lines.append(f"Top forking tokens, {name}: {top}")
    curve = report["entropy_curve"]
    if "fit" in curve:
        f = curve["fit"]
        bound = " (a held at its bound 0: no relation of this form)" if f.get("a_at_bound") else ""
        lines += ["", f"Entropy-performance curve over {len(curve['points'])} {TOKEN} checkpoints: "
                      f"R = -{f['a']:.4f}·exp(H) + {f['b']:.4f}, R² = {f['r2']:.3f}{bound}."]
    lines += ["", "Plots: entropy_histogram.png, accuracy_vs_samples.png, accuracy_vs_hops.png (tasks with a hop "
                  "count), diversity.png, entropy_curve.png, validation_curves.png (the first seed's validation loss "
                  "per system, relative to its first value: trained to a plateau?)", ""]
    return "\n".join(lines)


def lr_sweep_lines(report: dict) -> list[str]:
    """The learning-rate sweep as a table: each system's best validation loss per rate, and the rate it kept."""
    sweep = report.get("lr_sweep")
    if not sweep:
        return []
    values = list(next(iter(sweep.values()))["val_loss"])
    lines = ["", "Learning rate per system: the lowest validation loss of the first seed's run at each rate, at the "
                 "comparison's budget (each system's own objective: comparable across its rates, not across systems).",
             "", "| system | " + " | ".join(f"lr {v}" for v in values) + " | chosen |",
             "|" + "---|" * (len(values) + 2)]
    for name, s in sweep.items():
        cells = [f"{s['val_loss'][v]:.4f}" if np.isfinite(s["val_loss"][v]) else "n/a" for v in values]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {s['chosen']:g} |")
    return lines


def plots(out: Path, report: dict, histograms: dict[str, list[float]]) -> None:
    """entropy_histogram.png, accuracy_vs_samples.png, diversity.png (k > 1), entropy_curve.png (checkpoints)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name, draw, size in (("entropy_histogram", entropy_histogram, (6, 3.5)),
                             ("accuracy_vs_samples", accuracy_vs_samples, (6, 3.5)),
                             ("accuracy_vs_hops", accuracy_vs_hops, (6, 3.5)),
                             ("diversity", diversity_bars, (7, 3.5)), ("entropy_curve", entropy_curve_plot, (5, 3.5)),
                             ("validation_curves", validation_curves_plot, (6, 3.5))):
        fig, ax = plt.subplots(figsize=size)
        # a dozen rows: 20 colours and 6 markers so no two systems look alike, and the legend beside the axes
        ax.set_prop_cycle(color=plt.cm.tab20.colors[:12], marker=["o", "s", "^", "D", "v", "P"] * 2)
        if draw(ax, report, histograms):
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
            with atomic_path(out / f"{name}.png") as tmp:
                fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
        plt.close(fig)


def entropy_histogram(ax, report: dict, histograms: dict[str, list[float]]) -> bool:
    for name, h in histograms.items():
        ax.hist(h, bins=50, alpha=0.6, label=name, density=True)
    ax.axvline(report["results"][TOKEN]["forking_threshold"], color="k", ls="--",
               label=f"80th percentile ({TOKEN})")
    ax.set_xlabel("token entropy (nats)")
    ax.set_ylabel("density")
    return True


def accuracy_vs_samples(ax, report: dict, _histograms) -> bool:
    for name, r in report["results"].items():
        ax.plot(range(1, len(r["pass_curve"]) + 1), r["pass_curve"], label=name)
    if report["chance_accuracy"]:
        ax.axhline(report["chance_accuracy"], color="grey", ls=":", label="majority answer")
    ax.set_xlabel("samples k")
    ax.set_ylabel("pass@k")
    return True


def accuracy_vs_hops(ax, report: dict, _histograms) -> bool:
    """Accuracy per hop count for every system (tasks whose problems record their hops, e.g. Forks)."""
    res = {n: r["accuracy_by_hops"] for n, r in report["results"].items() if r.get("accuracy_by_hops")}
    for name, by in res.items():
        n = (report.get("systems") or {}).get(name, {}).get("problems")  # a control run on fewer problems says so
        full = n in (None, report["problems"])
        ax.plot([int(h) for h in by], list(by.values()), label=name if full else f"{name} ({n} problems)",
                ls="-" if full else "--")
    if res and report["chance_accuracy"]:
        ax.axhline(report["chance_accuracy"], color="grey", ls=":", label="chance")
    ax.set_xticks(sorted({int(h) for by in res.values() for h in by}))
    ax.set_xlabel("hops")
    ax.set_ylabel("accuracy")
    return bool(res)


def validation_curves_plot(ax, report: dict, _histograms) -> bool:
    """Each system's validation loss over optimizer steps (first seed), divided by its first value: losses of
    different objectives on one axis, each showing whether it still falls at the end of the budget."""
    curves = {n: c for n, c in (report.get("validation_curves") or {}).items() if c.get("val_loss")}
    for name, c in curves.items():
        ax.plot(c["step"], np.asarray(c["val_loss"]) / c["val_loss"][0], markersize=3, label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("val loss / first val loss")
    return bool(curves)


def diversity_bars(ax, report: dict, _histograms) -> bool:
    res = report["results"]
    names = [n for n in res if "distinct_2" in res[n]]  # none when k = 1
    metrics = (("distinct_2", "distinct-2"), ("distinct_solutions", "distinct solutions"), ("vendi", "Vendi / k"))
    width = 0.8 / max(len(names), 1)
    for j, name in enumerate(names):
        vals = [res[name][m] / (report["k"] if m == "vendi" else 1) for m, _ in metrics]
        ax.bar(np.arange(len(metrics)) + j * width, vals, width, label=name)
    ax.set_xticks(np.arange(len(metrics)) + width * (len(names) - 1) / 2, [m[1] for m in metrics])
    return bool(names)


def entropy_curve_plot(ax, report: dict, _histograms) -> bool:
    curve = report["entropy_curve"]
    pts = curve["points"]
    if not pts:  # no epoch*.ckpt in the token run
        return False
    ax.scatter([p["entropy"] for p in pts], [p["accuracy"] for p in pts], label="checkpoints")
    if "fit" in curve:
        f = curve["fit"]
        xs = np.linspace(min(p["entropy"] for p in pts), max(p["entropy"] for p in pts), 50)
        # a curve, not data: no marker from the series cycle (`plots`), and a colour apart from the checkpoints'
        ax.plot(xs, -f["a"] * np.exp(xs) + f["b"], marker="", color="k", label=f"fit, R²={f['r2']:.2f}")
    ax.set_xlabel("mean token entropy (nats)")
    ax.set_ylabel("greedy accuracy")
    return True
