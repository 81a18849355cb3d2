"""RL rollout cost: token policy vs concept policies at (about) equal parameters, in one run.

For `--problems` held-out forks problems, G = `--group` rollouts each, exactly as a GRPO step draws them
(`lcm.train.rl_policies`: the token policy samples with its KV cache, one batch of G per problem; the concept
policies step all B x G rollouts together with theirs (`lcm.model.ConceptStepper`), and the categorical policy once
more without it -- re-running the trunk over the whole context each step, as before the cache -- so the cache's
gain is measured in the same run; the concept rows include MiniLM's encoding of the prompts, part of the system,
timed apart as well).
Then the scoring
forward + backward of those rollouts (what one GRPO update costs). Policies alternate for `--repeats` rounds;
medians are reported as rollouts/s and milliseconds per reasoning step (a line of the token model, a step of a
concept model), with the token / concept ratios measured in this run.

    HF_HUB_OFFLINE=1 python benchmarks/rl_rollout_cost.py --token runs/sft_token_forks/version_0/checkpoints/best.ckpt \
        --concept runs/sft_concept_forks/version_0/checkpoints/best.ckpt [--group 8 --problems 4 --repeats 3]
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from lcm.errors import run_command
from lcm.grpo import RLConfig, group_advantages, policy_loss
from lcm.io import write_json
from lcm.train import Forks
from lcm.train.datamodule import load_documents
from lcm.train.rl_policies import ConceptCategoricalPolicy, ConceptGaussianPolicy, TokenPolicy

RESULTS = Path(__file__).resolve().parent / "results"


def steps_of(policy, rollouts) -> int:
    """Reasoning steps the rollouts wrote: lines for the token policy, bank steps (end-of-text excluded) otherwise."""
    if isinstance(policy, TokenPolicy):
        return sum(len([ln for ln in t.splitlines() if ln.strip()]) for t in rollouts.texts)
    return sum(u - int(s) for u, s in zip(rollouts.units, rollouts.stopped))


def one_round(policy, docs, group: int, seed: int) -> dict:
    t0 = time.perf_counter()
    policy.eval()
    rollouts = policy.rollout(docs, group, 1.0, torch.Generator().manual_seed(seed))
    t1 = time.perf_counter()
    policy.train()
    logp, entropy, mask, _ = policy.score(rollouts.batch, 1.0)
    adv = group_advantages(torch.randn(len(rollouts.texts)), group)
    loss, _ = policy_loss(logp, logp.detach(), adv, mask, entropy, RLConfig(group_size=group))
    loss.backward()
    policy.zero_grad(set_to_none=True)
    t2 = time.perf_counter()
    encode_s = 0.0
    if not isinstance(policy, TokenPolicy):  # the part of a concept rollout that is MiniLM encoding the prompts
        with torch.no_grad():
            policy._prompts(docs)
        encode_s = time.perf_counter() - t2
    return {"rollout_s": t1 - t0, "update_s": t2 - t1, "encode_s": encode_s, "rollouts": len(rollouts.texts),
            "steps": steps_of(policy, rollouts), "units": sum(rollouts.units)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--token", type=Path, default=Path("runs/sft_token_forks/version_0/checkpoints/best.ckpt"))
    p.add_argument("--concept", type=Path, default=Path("runs/sft_concept_forks/version_0/checkpoints/best.ckpt"))
    p.add_argument("--problems", type=int, default=4)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=320)
    p.add_argument("--max-steps", type=int, default=32)
    p.add_argument("--out", type=Path, default=RESULTS / "rl_rollout_cost.json")
    args = p.parse_args()
    torch.manual_seed(0)
    source = Forks(n=1000, seed=0, min_hops=1, max_hops=4, problem_sets=4)
    docs = load_documents(source, 256, 0.1, 0.1, 0)[0]["val"][: args.problems]
    policies = {"token (HF Llama)": TokenPolicy(str(args.token), max_new_tokens=args.max_new_tokens),
                "concept categorical": ConceptCategoricalPolicy(str(args.concept), max_steps=args.max_steps),
                "concept categorical, no KV cache": ConceptCategoricalPolicy(str(args.concept), max_steps=args.max_steps,
                                                                             use_cache=False),
                "concept Gaussian": ConceptGaussianPolicy(str(args.concept), max_steps=args.max_steps)}
    params = {name: sum(q.numel() for q in (pol.lm.net.parameters())) for name, pol in policies.items()}
    rounds: dict[str, list[dict]] = {name: [] for name in policies}
    for r in range(args.repeats):
        for name, pol in policies.items():
            rounds[name].append(one_round(pol, docs, args.group, seed=r))
    rows = {}
    for name, rs in rounds.items():
        med = {k: statistics.median(x[k] for x in rs) for k in ("rollout_s", "update_s", "encode_s", "steps", "units")}
        rows[name] = {**med, "params": params[name], "rollouts": rs[0]["rollouts"],
                      "rollouts_per_s": rs[0]["rollouts"] / med["rollout_s"],
                      "ms_per_step": 1000 * med["rollout_s"] / max(med["steps"], 1),
                      "ms_per_step_without_encoding": 1000 * (med["rollout_s"] - med["encode_s"]) / max(med["steps"], 1),
                      "update_ms_per_step": 1000 * med["update_s"] / max(med["steps"], 1)}
    token = rows["token (HF Llama)"]
    for name, row in rows.items():
        row["token_over_this_per_step"] = token["ms_per_step"] / row["ms_per_step"]
    table = Table(title=f"RL rollouts: {args.problems} problems x G={args.group}, median of {args.repeats} "
                        f"(torch threads {torch.get_num_threads()})")
    for col in ("policy", "params", "rollouts/s", "steps", "ms / step (rollout)", "of which prompt encoding",
                "ms / step (update)", "token / this per step"):
        table.add_column(col)
    for name, row in rows.items():
        table.add_row(name, f"{row['params'] / 1e6:.2f}M", f"{row['rollouts_per_s']:.2f}", f"{row['steps']:.0f}",
                      f"{row['ms_per_step']:.1f}", f"{row['ms_per_step'] - row['ms_per_step_without_encoding']:.1f}",
                      f"{row['update_ms_per_step']:.1f}",
                      f"{row['token_over_this_per_step']:.2f}x")
    Console().print(table)
    write_json(args.out, {"date": dt.datetime.now().isoformat(timespec="seconds"), "cpus": os.cpu_count(),
                          "threads": torch.get_num_threads(), "args": {k: str(v) for k, v in vars(args).items()},
                          "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_command(main)
