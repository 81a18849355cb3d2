"""Concept models vs a token baseline of equal size on the same held-out problems: one command, one report.

    HF_HUB_OFFLINE=1 lcm eval compare -c eval/configs/logic.yaml      # or python -m lcm.eval.compare -c ...

Trains what is missing with `lcm fit` (finished runs are reused), then for every system -- each concept
model of the config, the token baseline (a Hugging Face Llama; temperature / top-p sampling) and the same model
in Soft Thinking mode --
generates k solutions per held-out problem on one device, and writes to `out_dir`: `metrics.json`,
`report.md` and PNG plots. Metric definitions: docs/metrics.md and `lcm.eval.reasoning_metrics`.

The parts: `compare_config` (the YAML schema), `sampling_runs` (sampling each system), `scoring` (the
metrics of one system), `report` (markdown and plots); this module runs them in order.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from lcm.errors import LCMError
from lcm.eval import reasoning_metrics as rm
from lcm.eval.compare_config import CompareConfig, Sampling, load_config
from lcm.eval.lr_sweep import lr_override, sweep, validation_curve
from lcm.eval.report import BANK_RESTRICTED, FOLLOWER, TOKEN, TOKEN_ROWS, table, write_report
from lcm.eval.sampling_runs import concept_samples, entropy_curve, token_keywords, token_samples
from lcm.eval.scoring import chance_accuracy, relative_cost, summarize, token_entropy_stats

__all__ = ["CompareConfig", "HeldOut", "main", "run_compare"]


@dataclass
class HeldOut:
    """The first `problems` test problems of the shared data source, with gold answers and reference solutions."""

    problems: list[str]
    golds: list[str]
    refs: list[str]
    prompts: list[list[str]] | None = None  # each problem's prompt sentences as training split them
    hops: list[int] | None = None  # each problem's hop count, for tasks that record one (Forks, LogicChains)
    docs: list | None = None  # the held-out documents themselves (the follower reads their facts)


def test_documents(config: str, overrides: list[str], n: int) -> list:
    """The first n held-out test documents of a training config's data (with `overrides`), exactly as `lcm fit`
    splits them."""
    from lcm.train.cli import make_cli

    return make_cli(["-c", config, *overrides], run=False).datamodule.documents("test")[:n]


def add_overrides_argument(parser) -> None:
    """`--overrides ...` (last on the line): the `lcm fit` data overrides evaluated checkpoints were trained with."""
    import argparse

    parser.add_argument("--overrides", nargs=argparse.REMAINDER, default=[],
                        help="last: the `lcm fit` data overrides the checkpoints were trained with (their held-out problems)")


def held_out_for(checkpoints: dict[str, list[str]], config: str, overrides: list[str], n: int) -> list:
    """`test_documents`, after checking that every checkpoint ({system: paths}) was trained on that data: its
    recorded corpus must be the one `config` + `overrides` prepares (else its held-out problems may be training
    problems, or from another distribution). One error line names the first checkpoint that differs. Preparing the
    corpus encodes what the embedding cache does not hold yet (nothing, for the data the checkpoints were fit on)."""
    from lcm.checkpoint import load_checkpoint
    from lcm.train.cli import make_cli

    dm = make_cli(["-c", config, *overrides], run=False).datamodule
    key = dm.corpus_key
    for name, paths in checkpoints.items():
        for path in paths:
            trained_on = (load_checkpoint(path).get("lcm") or {}).get("corpus")
            if trained_on not in (None, key):
                given = " ".join([config, *overrides])
                raise LCMError(f"{name}: {path} was trained on corpus {trained_on}, not on the data of {given} ({key}): "
                               "pass the overrides it was trained with (--overrides ...)")
    return dm.documents("test")[:n]


def held_out(cfg: CompareConfig) -> HeldOut:
    """The token config's held-out problems; every concept config must hold out the same ones."""
    from lcm.train.token_data import render_solution

    docs = test_documents(cfg.token.config, cfg.train_overrides, cfg.problems)
    if not docs:
        raise LCMError(f"{cfg.token.config} holds out no test problems; raise data test_fraction or add documents")
    if any(d.answer is None for d in docs):
        raise LCMError("held-out documents without an answer: accuracy needs a `#### answer` per problem")
    problems = [d.prompt_text for d in docs]
    for s in cfg.concept:
        if [d.prompt_text for d in test_documents(s.config, cfg.train_overrides, cfg.problems)] != problems:
            raise LCMError(f"{s.config} and {cfg.token.config} hold out different problems: use one data source")
    hops = [d.meta["hops"] for d in docs] if all("hops" in d.meta for d in docs) else None
    return HeldOut(problems, [d.answer for d in docs], [render_solution(d) for d in docs],
                   prompts=[list(d.prompt) for d in docs], hops=hops, docs=docs)


def training_configs(cfg: CompareConfig) -> dict[str, str]:
    """{system name: its `lcm fit` config}: every concept system and the token baseline."""
    return {**{s.name: s.config for s in cfg.concept}, TOKEN: cfg.token.config}


def train_all(cfg: CompareConfig, lrs: dict[str, float] | None = None) -> dict[str, Path]:
    """`lcm fit` every system with `cfg.seed` that has no finished run yet (before any sampling), at its chosen
    learning rate when there was a sweep (`lrs`); {system name: run folder}."""
    from lcm.eval.planning_ablation import train_run

    root = Path(cfg.runs_dir) / cfg.name
    return {name: train_run(config, cfg.seed, root, label=name,
                            overrides=[*cfg.train_overrides, *(lr_override(lrs[name]) if lrs else [])])
            for name, config in training_configs(cfg).items()}


def run_concepts(cfg: CompareConfig, data: HeldOut, runs: dict[str, Path], results: dict, info: dict) -> None:
    """Sample and score every concept system into `results` / `info`."""
    for s in cfg.concept:
        ckpt = runs[s.name] / "checkpoints" / "best.ckpt"
        meta = run_concept_row(cfg, data, ckpt, s.name, s.config, s.sampling, results, info)
        if cfg.concept_greedy and meta["has_noise"] and s.sampling.noise:  # None / 0: already greedy
            # beside the token model's greedy row: noise 0 makes Base-LCM deterministic, so one solution per problem
            run_concept_row(replace(cfg, k=1), data, ckpt, greedy_row(s.name), s.config, Sampling(noise=0.0), results,
                            info)


def greedy_row(concept: str) -> str:
    return f"{concept} (greedy)"


def run_concept_row(cfg: CompareConfig, data: HeldOut, ckpt: Path, name: str, config: str, sampling: Sampling,
                    results: dict, info: dict) -> dict:
    """One row of a concept system: cfg.k samples per problem at `sampling`, scored into `results` / `info`;
    returns the sampling metadata. Concept models get each prompt as the sentences training split it into (a
    line-structured prompt is not re-split); the token model reads the same problem rendered as text."""
    groups, seconds, meta = concept_samples(ckpt, data.prompts, cfg, sampling, cfg.show_progress, name)
    results[name] = summarize(groups, data.golds, data.refs, seconds, data.hops)
    info[name] = {"config": config, "sampling": sampling.kwargs(), **meta,
                  "load_avg_1min": os.getloadavg()[0]}  # other processes slow every system: recorded
    return meta


def run_token(cfg: CompareConfig, data: HeldOut, run: Path, results: dict, info: dict,
              threshold: float | None = None) -> tuple[dict[str, list], float]:
    """Sample and score the token baseline's rows (`TOKEN_ROWS`: sampled, greedy, Soft Thinking at the official
    defaults, Soft Thinking with noise); forking tokens against one fixed threshold (given, or this run's
    80th-percentile entropy of the sampled baseline). Returns each system's per-token
    entropies (for the histogram) and the threshold."""
    from lcm.encoders import SentenceTransformerEncoder
    from lcm.token_model import TokenLM

    model = TokenLM.from_checkpoint(run / "checkpoints" / "best.ckpt", device=cfg.device)
    encoder, groups = SentenceTransformerEncoder(), {}
    token_info = {"config": cfg.token.config, "params": model.num_params()}
    for name, mode in TOKEN_ROWS.items():
        groups[name], seconds = token_samples(model, data.problems, cfg, encoder, mode=mode, show=cfg.show_progress,
                                              label=name)
        results[name] = summarize(groups[name], data.golds, data.refs, seconds, data.hops)
        settings = token_keywords(cfg, mode=mode)
        if "soft" in settings:
            settings["soft"] = asdict(settings["soft"])  # what this row used, noise included
        info[name] = {**token_info, "generate": settings, "load_avg_1min": os.getloadavg()[0]}
    entropies = {name: np.concatenate([s.entropies for g in gs for s in g]) for name, gs in groups.items()}
    threshold = rm.entropy_threshold(entropies[TOKEN]) if threshold is None else threshold
    for name, gs in groups.items():
        token_entropy_stats(results[name], gs, threshold)
    return {name: e.tolist() for name, e in entropies.items()}, threshold


FOLLOWER_SOURCES = {"forks", "logic_chains"}  # tasks whose prompts are facts + a question the follower can walk


def run_follower(data: HeldOut, results: dict, info: dict) -> None:
    """Control (i): the zero-parameter encoder follower on the held-out problems."""
    from lcm.encoders import SentenceTransformerEncoder
    from lcm.eval.controls import follower_samples

    groups, seconds = follower_samples(data.docs, SentenceTransformerEncoder())
    results[FOLLOWER] = summarize(groups, data.golds, data.refs, seconds, data.hops)
    results[FOLLOWER]["train_flops"] = results[FOLLOWER]["train_seconds"] = 0.0  # nothing trained (encoder: wall time)
    info[FOLLOWER] = {"params": 0, "control": "lcm.eval.controls.follower_samples (cosine walk)"}


def run_bank_restricted(cfg: CompareConfig, data: HeldOut, runs: dict[str, Path], results: dict, info: dict) -> None:
    """Control (ii): the token model choosing each line from the first concept system's bank (its best line by
    log-likelihood), on the first `controls.bank_problems` problems."""
    from lcm.encoders import SentenceTransformerEncoder
    from lcm.eval.controls import bank_restricted_samples
    from lcm.generate import ConceptGenerator
    from lcm.token_model import TokenLM

    n = min(cfg.controls.bank_problems, len(data.problems))
    gen = ConceptGenerator.from_checkpoint(runs[cfg.concept[0].name] / "checkpoints" / "best.ckpt")
    model = TokenLM.from_checkpoint(runs[TOKEN] / "checkpoints" / "best.ckpt", device=cfg.device)
    groups, seconds = bank_restricted_samples(model, data.problems[:n], gen.bank.texts, gen.eot_text, cfg.max_steps,
                                              encoder=SentenceTransformerEncoder(), show=cfg.show_progress,
                                              label=BANK_RESTRICTED)
    results[BANK_RESTRICTED] = summarize(groups, data.golds[:n], data.refs[:n], seconds,
                                         data.hops[:n] if data.hops else None)
    info[BANK_RESTRICTED] = {"params": model.num_params(), "problems": n, "bank": f"{cfg.concept[0].name}'s"}


def run_decoder_readout(cfg: CompareConfig, data: HeldOut, runs: dict[str, Path], results: dict, info: dict) -> None:
    """Control (iii): the first concept system read out by a trained sentence decoder (open vocabulary: it can
    write a sentence no bank holds) instead of retrieval, at the same sampling settings."""
    from lcm.decoder import SentenceDecoderLM
    from lcm.decoding import GenerativeDecoder
    from lcm.encoders import SentenceTransformerEncoder
    from lcm.eval.planning_ablation import train_run

    first = cfg.concept[0]
    run = train_run(cfg.controls.decoder, cfg.seed, Path(cfg.runs_dir) / cfg.name, label="decoder",
                    overrides=cfg.controls.decoder_overrides)
    decoder = SentenceDecoderLM.from_checkpoint(run / "checkpoints" / "best.ckpt", device=cfg.device)
    name = decoder_row(first.name)
    groups, seconds, meta = concept_samples(runs[first.name] / "checkpoints" / "best.ckpt", data.prompts, cfg,
                                            first.sampling, cfg.show_progress, name,
                                            decoder=GenerativeDecoder(decoder, SentenceTransformerEncoder()))
    results[name] = summarize(groups, data.golds, data.refs, seconds, data.hops)
    info[name] = {**meta, "config": first.config, "decoder": cfg.controls.decoder,
                  "decoder_params": sum(p.numel() for p in decoder.parameters()), "sampling": first.sampling.kwargs()}
    runs[name] = run  # its training cost: the concept run's plus the decoder's (training_flops)


def decoder_row(concept: str) -> str:
    return f"{concept}, read out by the decoder"


def run_seed(cfg: CompareConfig, data: HeldOut, threshold: float | None,
             lrs: dict[str, float] | None = None) -> tuple[dict, dict, dict, float, dict[str, Path]]:
    """Train (what is missing), sample and score every system with `cfg.seed`: (results, info, histograms,
    forking threshold, the run folders)."""
    runs = train_all(cfg, lrs)
    results, info = {}, {}
    run_concepts(cfg, data, runs, results, info)
    histograms, threshold = run_token(cfg, data, runs[TOKEN], results, info, threshold)
    if cfg.controls.bank_restricted:
        run_bank_restricted(cfg, data, runs, results, info)
    if cfg.controls.decoder:
        run_decoder_readout(cfg, data, runs, results, info)
    relative_cost(results, {name: i["denoiser_evals_per_call"] for name, i in info.items()
                            if "denoiser_evals_per_call" in i}, TOKEN)  # every concept row, read-outs included
    training_flops(cfg, results, runs)
    return results, info, histograms, threshold, runs


def training_flops(cfg: CompareConfig, results: dict, runs: dict[str, Path]) -> None:
    """Each system's training FLOPs from its run's training_cost.json (`lcm.train.cost`: trunk, and for concept
    systems the frozen encoder's passes over the corpus): `train_flops`, `train_flops_encoder`. The token
    baseline's rows (greedy, Soft Thinking, the bank-restricted control) share its run."""
    import json

    costs = {name: json.loads((run / "training_cost.json").read_text()) for name, run in runs.items()}
    for name, cost in costs.items():
        rows = ([r for r in results if r in TOKEN_ROWS or r == BANK_RESTRICTED] if name == TOKEN
                else [r for r in (name, greedy_row(name)) if r in results])  # rows sharing one run
        total, encoder = cost["total_flops"], cost.get("encoder_flops") or 0.0
        seconds = cost.get("fit_seconds", float("nan"))  # runs older than the field: n/a
        if name not in training_configs(cfg):  # the decoder read-out: the concept run plus the decoder's training
            first = costs[cfg.concept[0].name]  # (the encoder's passes over the shared corpus counted once)
            total, encoder = first["total_flops"] + cost["trunk_train_flops"], first.get("encoder_flops") or 0.0
            seconds += first.get("fit_seconds", float("nan"))
        for row in rows:
            results[row]["train_flops"], results[row]["train_flops_encoder"] = float(total), float(encoder)
            results[row]["train_seconds"] = float(seconds)


def run_compare(cfg: CompareConfig) -> dict:
    """Train what is missing, sample and score every system for every seed, write metrics.json, report.md and
    plots. Several seeds: each system's numbers are means over seeds (`by_seed` keeps each), its accuracy CI is
    bootstrapped over problems on the per-problem accuracy averaged over seeds, and the forking threshold is the
    first seed's (one fixed threshold)."""
    started = time.perf_counter()
    data = held_out(cfg)
    seeds = cfg.seeds or [cfg.seed]
    swept = (sweep(training_configs(cfg), cfg.lr_sweep, seeds[0], Path(cfg.runs_dir) / cfg.name, cfg.train_overrides)
             if cfg.lr_sweep else None)
    lrs = {name: s["chosen"] for name, s in swept.items()} if swept else None
    by_seed, threshold = {}, None
    for seed in seeds:
        by_seed[seed], info, histograms, threshold, runs = run_seed(replace(cfg, seed=seed), data, threshold, lrs)
        if seed == seeds[0]:
            first_histograms, first_runs = histograms, runs
    n = cfg.curve_problems
    curve = entropy_curve(first_runs[TOKEN], data.problems[:n], data.golds[:n], replace(cfg, seed=seeds[0]),
                          cfg.show_progress)
    results = by_seed[seeds[0]] if len(seeds) == 1 else aggregate_seeds(by_seed)
    if cfg.controls.follower and FOLLOWER_SOURCES & {d.meta.get("source") for d in data.docs}:
        run_follower(data, results, info)  # no training, no seed: one row
    report = {"name": cfg.name, "problems": len(data.problems), "k": cfg.k, "seed": seeds[0], "seeds": seeds,
              "device": cfg.device, "systems": info, "results": results, "entropy_curve": curve,
              "chance_accuracy": chance_accuracy(data.golds, data.docs), "forking_threshold": threshold}
    if len(seeds) > 1:
        report["by_seed"] = {str(s): r for s, r in by_seed.items()}
    report["validation_curves"] = {name: dict(zip(("step", "val_loss"), validation_curve(run / "metrics.csv")))
                                   for name, run in first_runs.items()}  # the first seed's: trained to a plateau?
    report["wall_seconds"] = round(time.perf_counter() - started, 1)  # this invocation (runs it reused cost it 0)
    if swept:
        report["lr_sweep"] = {name: {"val_loss": {f"{lr:g}": v for lr, v in s["val_loss"].items()},
                                     "chosen": s["chosen"]} for name, s in swept.items()}
    write_report(Path(cfg.out_dir), report, first_histograms)
    return report


def aggregate_seeds(by_seed: dict[int, dict]) -> dict:
    """{seed: {system: metrics}} -> {system: metrics}: numbers averaged over seeds, `accuracy_std` across seeds,
    `accuracy_seeds`, and the accuracy CI bootstrapped over problems (each problem's accuracy averaged over seeds)."""
    seeds = list(by_seed)
    out = {}
    for name in by_seed[seeds[0]]:
        runs = [by_seed[s][name] for s in seeds]
        merged = {k: v for k, v in runs[0].items()}  # lists and strings (e.g. top forking tokens): the first seed's
        for key, value in runs[0].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values = np.array([r[key] for r in runs], dtype=np.float64)
                merged[key] = float(values[np.isfinite(values)].mean()) if np.isfinite(values).any() else float("nan")
        merged.update(rm.over_seeds([r["accuracy"] for r in runs], [r["per_problem_accuracy"] for r in runs]),
                      pass_curve=np.mean([r["pass_curve"] for r in runs], axis=0).tolist())
        if "accuracy_by_hops" in runs[0]:
            merged["accuracy_by_hops"] = {h: float(np.mean([r["accuracy_by_hops"][h] for r in runs]))
                                          for h in runs[0]["accuracy_by_hops"]}
        out[name] = merged
    return out


def main(argv: list[str] | None = None) -> None:
    """`lcm eval compare -c CONFIG.yaml [--problems N] [--<key> VALUE ...] [--no-progress]`."""
    cfg = load_config(argv)
    report = run_compare(cfg)
    print("\n".join(table(report)))
    print(f"wrote {cfg.out_dir}/metrics.json, report.md and plots")


if __name__ == "__main__":
    import sys

    from lcm.eval.cli import main as lcm_main

    lcm_main(["eval", "compare", *sys.argv[1:]])  # one error line for bad input, as `lcm eval compare`
