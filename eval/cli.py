"""The `lcm` command: LightningCLI subcommands, `lcm generate` and `lcm eval`.

Known bad input (LCMError) ends with one `error: ...` line and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys

from lcm.errors import LCMError, run_command


def generate_main(args: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="lcm generate", description="Generate reasoning steps for a problem.")
    parser.add_argument("problem", nargs="+", help="problem text (several arguments = several problems)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="checkpoint written by `lcm fit`")
    source.add_argument("--pretrained", help="model folder written by `lcm export` (weights, config, banks)")
    parser.add_argument("--bank", default=None, help="--ckpt: sentence bank folder (default: <ckpt folder>/bank)")
    parser.add_argument("--max-steps", type=int, default=16)
    parser.add_argument("--eot-threshold", type=float, default=None,
                        help="each prediction is end-of-text, a break or a step by the largest cosine; this adds a floor "
                             "on the cosine to end-of-text (above 1: never stop there). Default: no floor")
    parser.add_argument("--break-threshold", type=float, default=None,
                        help="planning models: a floor on the cosine to the break concept, as --eot-threshold")
    parser.add_argument("--feedback", choices=["decoded", "predicted", "retrieved"], default="decoded",
                        help="feed back the decoded text's embedding (default; 'retrieved' is its old name) "
                             "or the raw prediction")
    parser.add_argument("--decoder", default=None,
                        help="sentence-decoder or sentence-autoencoder checkpoint: hybrid read-out (retrieval hit if "
                             "cosine >= --threshold, else the closest of top-k bank sentences and decoded text)")
    parser.add_argument("--threshold", type=float, default=0.95, help="hybrid: retrieval cosine that skips decoding")
    parser.add_argument("--k", type=int, default=4,
                        help="hybrid: bank candidates compared with the decoded text; 0: the decoder alone")
    parser.add_argument("--beam", type=int, default=1, help="hybrid: beam size of the sentence decoder (1 = greedy)")
    parser.add_argument("--plan", action="append", default=None,
                        help="planning models: the plan of the next paragraph (repeat for paragraphs 2, 3, ...); its "
                             "sentences become one plan concept the way the checkpoint's planner built them")
    parser.add_argument("--seed", type=int, default=None, help="seed of the sampling noise")
    parser.add_argument("--noise", type=float, default=None,
                        help="Base-LCM only: sample with N(0, noise^2) added to each prediction (normalized space)")
    parser.add_argument("--guidance", type=float, default=None, help="diffusion only: classifier-free guidance scale")
    parser.add_argument("--ddim-steps", type=int, default=None, help="diffusion only: DDIM steps per concept")
    parser.add_argument("--eta", type=float, default=None, help="diffusion only: DDIM eta (0: deterministic steps)")
    parser.add_argument("--plan-source", choices=["sampled", "regressed"], default=None,
                        help="diffusion planning models only: sampled plans, or regressed by the context head "
                             "(a model trained with diffusion.context_loss > 0); default: the checkpoint's")
    parser.add_argument("--no-stop-on-repeat", dest="stop_on_repeat", action="store_false",
                        help="keep going when the solution loops (its last L steps repeat the L before them, "
                             "L <= 4; default: stop there)")
    parser.add_argument("--device", default="cpu")
    ns = parser.parse_args(args)
    from lcm.generate import ConceptGenerator, format_generation

    hybrid = {"k": ns.k, "threshold": ns.threshold, "beam": ns.beam} if ns.decoder else {}
    if ns.pretrained:
        gen = ConceptGenerator.from_pretrained(ns.pretrained, device=ns.device, decoder=ns.decoder, **hybrid)
    else:
        gen = ConceptGenerator.from_checkpoint(ns.ckpt, bank=ns.bank, device=ns.device, decoder=ns.decoder, **hybrid)
    plans = [ns.plan] * len(ns.problem) if ns.plan else None
    outs = gen.generate(ns.problem, max_steps=ns.max_steps, eot_threshold=ns.eot_threshold,
                        break_threshold=ns.break_threshold, feedback=ns.feedback, plans=plans, seed=ns.seed,
                        noise=ns.noise, guidance=ns.guidance, ddim_steps=ns.ddim_steps, eta=ns.eta,
                        plan_source=ns.plan_source,
                        stop_on_repeat=ns.stop_on_repeat)
    for out in outs:
        print(f"problem: {out.problem}")
        print("\n".join(format_generation(out)))
        print(f"  [stop: {out.stop_reason}]")


EVAL_COMMANDS = {"compare": "lcm.eval.compare", "budget": "lcm.eval.budget_curve", "frontier": "lcm.eval.frontier",
                 "follower": "lcm.eval.follower", "roundtrip": "lcm.eval.roundtrip", "trace": "lcm.eval.content_trace",
                 "rl": "lcm.eval.rl_report", "trl": "lcm.eval.trl_reference"}
HELP_FLAGS = ("-h", "--help")

EVAL_OVERVIEW = """usage: lcm eval {compare,budget,frontier,follower,roundtrip,trace,rl,trl} ...

  lcm eval compare -c eval/configs/NAME.yaml         train and score several models on one benchmark
  lcm eval budget -c eval/configs/NAME.yaml          accuracy against optimizer steps: when each system leaves the floor
  lcm eval frontier --config TRAIN.yaml --system NAME CKPT [CKPT ...] ...
                                                     accuracy vs distinct correct solutions over sampling settings
  lcm eval roundtrip --decoder CKPT [--text FILE]    sentence -> encoder -> decoder -> text round trip
  lcm eval follower [--source forks|logic] [--n N]   the zero-parameter encoder follower and heuristics
  lcm eval trace --config TRAIN.yaml --system NAME CKPT [DECODER] ...
                                                     where content is lost: encoder, concept model or read-out
  lcm eval rl RUN [RUN ...] [--names ...]            RL runs: entropy and accuracy per step, R = -a exp(H) + b fitted
                                                     on the first third of the steps, extrapolated to the rest
  lcm eval trl -c train/configs/rl_token.yaml --out DIR
                                                     the same token RL run by TRL's GRPOTrainer (the reference)

`lcm eval COMMAND --help` shows a command's options."""

OVERVIEW = f"""usage: lcm COMMAND ...

Training (LightningCLI; `lcm COMMAND --help` lists every option):
  lcm fit -c CONFIG.yaml [--section.key VALUE ...]   train; writes checkpoints and the sentence bank
  lcm validate|test -c CONFIG.yaml --ckpt_path CKPT  score a checkpoint
  lcm predict -c CONFIG.yaml --ckpt_path CKPT        write the model's predictions (predictions.npz)
  lcm embed -c CONFIG.yaml [--data.encode_processes N]  encode the corpus (N processes) and write its store

Generation:
  lcm generate --ckpt CKPT "PROBLEM" [...]           reasoning steps for one or more problems
  lcm generate --pretrained DIR "PROBLEM" [...]      the same from an exported model folder
  lcm export --ckpt CKPT DIR                         a shareable folder: safetensors, config, banks, card
  lcm plot RUN_DIR                                   PNG training curves of a run (RUN_DIR/plots/)

Evaluation:
{EVAL_OVERVIEW.split(chr(10), 2)[2]}"""


def export_main(args: list[str]) -> None:
    """`lcm export --ckpt CKPT DIR`: a shareable folder (safetensors, config.json, banks, model card)."""
    parser = argparse.ArgumentParser(prog="lcm export", description="Write a concept-model checkpoint as a "
                                     "shareable folder: model.safetensors, config.json, bank/, README.md card.")
    parser.add_argument("--ckpt", required=True, help="checkpoint written by `lcm fit` (its bank/ beside it)")
    parser.add_argument("folder", help="new folder to write")
    parser.add_argument("--push", metavar="OWNER/NAME", default=None,
                        help="also upload the folder to this Hugging Face hub model repo (network and a token needed)")
    parser.add_argument("--private", action="store_true", help="--push: create the hub repo as private")
    ns = parser.parse_args(args)
    import json

    from lcm.pretrained import CONFIG, TOKEN_RECORD, export_checkpoint, push_to_hub

    folder = export_checkpoint(ns.ckpt, ns.folder)
    name = ns.push or ns.folder
    if (folder / TOKEN_RECORD).is_file():
        how = "TokenLM.from_pretrained, or transformers' AutoModelForCausalLM / AutoTokenizer.from_pretrained"
    elif (json.loads((folder / CONFIG).read_text(encoding="utf-8")).get("lcm") or {}).get("kind") == "decoder":
        how = "SentenceDecoderLM.from_pretrained"
    else:
        how = f"`lcm generate --pretrained {name} \"PROBLEM\"` or ConceptGenerator.from_pretrained"
    print(f"exported to {folder}; load it with {how}")
    if ns.push:
        print(f"pushed to {push_to_hub(ns.folder, ns.push, ns.private)}")


def eval_main(args: list[str]) -> None:
    """`lcm eval compare -c eval/configs/<name>.yaml` (and the other eval scripts by name)."""
    import importlib

    if args and args[0] in HELP_FLAGS:
        print(EVAL_OVERVIEW)
        return
    if not args or args[0] not in EVAL_COMMANDS:
        raise LCMError(f"usage: lcm eval {{{','.join(EVAL_COMMANDS)}}} ... (got {' '.join(args[:1]) or 'nothing'})")
    importlib.import_module(EVAL_COMMANDS[args[0]]).main(args[1:])


def _dispatch(args: list[str]) -> None:
    """Run the subcommand `args[0]` (a LightningCLI one when it is none of lcm's own)."""
    if args[0] == "generate":
        generate_main(args[1:])
    elif args[0] == "export":
        export_main(args[1:])
    elif args[0] == "embed":
        from lcm.train.embed import main as embed_main

        embed_main(args[1:])
    elif args[0] == "plot":
        from lcm.eval.plot import main as plot_main

        plot_main(args[1:])
    elif args[0] == "eval":
        eval_main(args[1:])
    else:
        from lcm.train.cli import run

        run(args)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not args or args[0] in HELP_FLAGS:
        print(OVERVIEW, file=sys.stdout if args else sys.stderr)
        sys.exit(0 if args else 2)
    try:
        run_command(lambda: _dispatch(args))  # known bad input: one `error:` line, exit code 2
    except KeyboardInterrupt:
        print("interrupted: finished cache shards and checkpoints are kept; rerun to resume", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
