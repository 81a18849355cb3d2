"""Where a concept system loses a problem's content -- its numbers above all -- encoder, concept model or read-out.

For the held-out problems of a training config, each system (a concept checkpoint and its read-out: retrieval from
its bank, or a decoder checkpoint read out alone) is scored at three points of its pipe:

  round trip       each reference step encoded by the system's encoder and read out again: encoder + read-out
  teacher-forced   the model's prediction of each reference step from the gold context, read out: + the model
  free generation  solutions from the prompt alone (Base-LCM deterministic, diffusion sampled with seed 0):
                   + its own errors fed back

Each point reports exact match with the reference step (whitespace-normalized) and number recall: the share of the
reference steps' numbers (pooled over steps, with multiplicity, compared by value: "1,200" = "1200") found in the
read-out text, and the same share split in two: numbers the context (problem and earlier steps) already holds -- to
be carried -- and new ones -- to be computed. A step whose context is longer than the model's `max_seq_len` is
skipped (counted in the JSON). Free generation adds answer accuracy (95% bootstrap CI over problems), the answered
rate, step exact match at the same position (generated step i against reference step i, over the reference steps),
and number provenance: the share of generated numbers that occur in the problem or its reference solution (a number
from anywhere else came from a training sentence in the bank, or was made up). Cosines are not reported: they mean
different things in different spaces.

    HF_HUB_OFFLINE=1 lcm eval trace --config train/configs/quickstart.yaml \\
        --system MiniLM runs/quickstart/version_0/checkpoints/best.ckpt \\
        --system autoencoder runs/quickstart_ae/version_0/checkpoints/best.ckpt AE.ckpt
"""
from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from lcm.errors import LCMError
from lcm.eval import reasoning_metrics as rm
from lcm.eval.compare import add_overrides_argument
from lcm.io import atomic_path, write_json

NUMBER = re.compile(r"\d+(?:[.,]\d+)*")  # "1,450", "3.5" and "12" are one number each


def by_value(n: str) -> str:
    """A number's text by value: "1,200", "1200" and "1200.0" -> "1200"; "0.50" -> "0.5" (as answers compare)."""
    plain = n.replace(",", "")
    if not plain.replace(".", "", 1).isdigit():  # "1.2.3": not one number, kept as written
        return n
    v = float(plain)
    return str(int(v)) if v.is_integer() else repr(v)


def numbers(text: str) -> list[str]:
    return [by_value(n) for n in NUMBER.findall(text)]


def same_text(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


def provenance(texts: list[str], source: str) -> tuple[int, int]:
    """(generated numbers found in `source`, generated numbers) over `texts`."""
    allowed = set(numbers(source))
    found = [n in allowed for t in texts for n in numbers(t)]
    return sum(found), len(found)


def number_hits(ref: str, text: str, context: str) -> tuple[list[float], list[float]]:
    """Per number of `ref` (with multiplicity): found in `text` (1.0) or not, split into the numbers `context`
    already holds (to carry) and new ones (to compute)."""
    have, seen = Counter(numbers(text)), set(numbers(context))
    carried, new = [], []
    for n in numbers(ref):
        (carried if n in seen else new).append(float(have[n] > 0))
        have[n] -= 1
    return carried, new


def step_scores(refs: list[str], texts: list[str], contexts: list[str]) -> dict[str, list[float]]:
    """Read-out texts against reference steps, position by position (`contexts`: the text before each step): per
    step exact match; per reference number found or not, pooled ("numbers") and split into carried and new."""
    out = {"exact": [float(same_text(r, t)) for r, t in zip(refs, texts)], "numbers": [], "carried": [], "new": []}
    for r, t, c in zip(refs, texts, contexts):
        carried, new = number_hits(r, t, c)
        out["carried"] += carried
        out["new"] += new
        out["numbers"] += carried + new
    return out


def step_predictions(gen, doc, generator: torch.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    """The model's prediction of each of `doc`'s reference steps from the gold context (prompt and the steps
    before it) and each step's own embedding: (preds (S, D), step embeddings (S, D), steps skipped because
    their context is longer than the model's `max_seq_len`, at the end)."""
    concepts = list(doc.prompt) + doc.steps
    emb = torch.as_tensor(gen.encoder.encode(concepts), dtype=torch.float32, device=gen.device)  # (N, D)
    first = len(doc.prompt)
    lengths = torch.arange(first, len(concepts), device=gen.device)  # (S,) context length before each step
    keep = lengths <= gen.model.arch.max_seq_len
    if not keep.any():  # even the prompt is longer than the model reads
        return np.zeros((0, emb.shape[1]), np.float32), np.zeros((0, emb.shape[1]), np.float32), len(keep)
    lengths = lengths[keep]
    x = emb[:int(lengths.max())].unsqueeze(0).expand(len(lengths), -1, -1)  # (S, T, D): row j reads lengths[j]
    with torch.no_grad():
        preds = gen.model.next_concept(x, lengths, generator).float().cpu().numpy()  # (S, D)
    return preds, emb[first:][keep].cpu().numpy(), int((~keep).sum())


def teacher_forced(gen, doc, generator: torch.Generator) -> tuple[list[str], list[str], int]:
    """(round-trip texts, prediction texts, steps skipped) for `doc`'s reference steps, read out by `gen.decoder`."""
    preds, steps, skipped = step_predictions(gen, doc, generator)
    if not len(preds):
        return [], [], skipped
    return [d.text for d in gen.decoder.decode(steps)], [d.text for d in gen.decoder.decode(preds)], skipped


def free_generation(gen, docs, max_steps: int) -> dict:
    """Solutions for `docs` (plans excluded; Base-LCM deterministic, a diffusion model sampled with seed 0) scored
    against their references (module docstring)."""
    outs = gen.generate([list(d.prompt) for d in docs], max_steps=max_steps, seed=0)
    outs = outs if isinstance(outs, list) else [outs]
    correct, answered, exact, found, total = [], [], [], 0, 0
    for d, out in zip(docs, outs):
        steps = [s.text for s in out.steps if not s.is_plan]
        answer = rm.parse_answer("\n".join(steps))
        correct.append(float(rm.answers_match(answer, d.answer)))
        answered.append(float(answer is not None))
        exact += [float(i < len(steps) and same_text(r, steps[i])) for i, r in enumerate(d.steps)]
        f, n = provenance(steps, d.prompt_text + "\n" + "\n".join(d.steps))
        found, total = found + f, total + n
    lo, hi = rm.bootstrap_ci(np.array(correct))
    return {"accuracy": float(np.mean(correct)), "accuracy_ci": [float(lo), float(hi)],
            "answered": float(np.mean(answered)), "step_exact": float(np.mean(exact)),
            "numbers_in_problem_or_reference": found / total if total else None, "generated_numbers": total,
            "example": {"problem": docs[0].prompt_text, "reference": docs[0].steps,
                        "generated": [s.text for s in outs[0].steps if not s.is_plan]}}


def trace_system(ckpt: str, decoder: str | None, docs, max_steps: int) -> dict:
    from lcm.generate import ConceptGenerator

    gen = ConceptGenerator.from_checkpoint(ckpt, decoder=decoder, k=0)  # k: the decoder alone, when there is one
    if gen.planning:
        raise LCMError(f"{ckpt} plans its paragraphs: the teacher-forced trace reads models without planning")
    generator = torch.Generator(device=gen.device).manual_seed(0)
    keys = ("exact", "numbers", "carried", "new")
    rt, tf, skipped = {k: [] for k in keys}, {k: [] for k in keys}, 0
    for doc in docs:
        round_trip, predicted, n_skipped = teacher_forced(gen, doc, generator)
        skipped += n_skipped
        contexts = [" ".join(list(doc.prompt) + doc.steps[:j]) for j in range(len(round_trip))]
        for into, texts in ((rt, round_trip), (tf, predicted)):
            for key, values in step_scores(doc.steps[:len(texts)], texts, contexts).items():
                into[key] += values
    mean = lambda v: float(np.mean(v)) if v else None  # noqa: E731
    return {"checkpoint": ckpt, "read_out": f"decoder {decoder}" if decoder else "retrieval from the bank",
            "encoder_id": gen.encoder.id, "steps": len(rt["exact"]), "steps_past_max_seq_len": skipped,
            "round_trip": {k: mean(v) for k, v in rt.items()}, "teacher_forced": {k: mean(v) for k, v in tf.items()},
            "generation": free_generation(gen, docs, max_steps)}


def markdown(report: dict) -> str:
    f = lambda v: "--" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [f"# Where the content is lost: {report['config']}", "",
             f"{report['problems']} held-out problems ({report['steps']} reference steps), generation of at most "
             f"{report['max_steps']} steps. EM = exact match with the reference step; numbers = the share of the "
             "reference steps' numbers found in the text (carried: already in the context; new: computed).", "",
             "| system | read-out | round trip EM | round trip numbers | teacher-forced EM | teacher-forced numbers "
             "(carried / new) | accuracy [95% CI] | answered | step EM (generated) | generated numbers in the problem "
             "or its reference |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in report["systems"].items():
        g = s["generation"]
        lo, hi = g["accuracy_ci"]
        lines.append(f"| {name} | {s['read_out']} | {f(s['round_trip']['exact'])} | {f(s['round_trip']['numbers'])} | "
                     f"{f(s['teacher_forced']['exact'])} | {f(s['teacher_forced']['numbers'])} "
                     f"({f(s['teacher_forced']['carried'])} / {f(s['teacher_forced']['new'])}) | "
                     f"{g['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] | {g['answered']:.3f} | {g['step_exact']:.3f} | "
                     f"{f(g['numbers_in_problem_or_reference'])} (of {g['generated_numbers']}) |")
    for name, s in report["systems"].items():
        ex = s["generation"]["example"]
        lines += ["", f"**{name}**, first held-out problem: {ex['problem']}", "", "| reference | generated |", "|---|---|"]
        n = max(len(ex["reference"]), len(ex["generated"]))
        pad = lambda v, i: v[i].replace("|", "\\|") if i < len(v) else ""  # noqa: E731
        lines += [f"| {pad(ex['reference'], i)} | {pad(ex['generated'], i)} |" for i in range(n)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="lcm eval trace", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="training config whose held-out problems are traced")
    p.add_argument("--system", nargs="+", action="append", required=True, metavar=("NAME", "CKPT"),
                   help="NAME CKPT [DECODER]: a concept checkpoint, read out by retrieval from its bank, or by the "
                        "sentence-decoder / autoencoder checkpoint DECODER alone; repeat for each system")
    p.add_argument("--problems", type=int, default=100)
    p.add_argument("--max-steps", type=int, default=16)
    p.add_argument("--out", type=Path, default=Path("runs/trace"))
    add_overrides_argument(p)
    ns = p.parse_args(argv)
    systems = {}
    for entry in ns.system:
        if len(entry) not in (2, 3):
            raise LCMError(f"--system {entry[0]!r}: give NAME CKPT [DECODER], not {len(entry) - 1} paths")
        if entry[0] in systems:
            raise LCMError(f"--system {entry[0]!r} is given twice")
        missing = [c for c in entry[1:] if not Path(c).is_file()]
        if missing:
            raise LCMError(f"--system {entry[0]!r}: no checkpoint at {', '.join(missing)}")
        systems[entry[0]] = (entry[1], entry[2] if len(entry) == 3 else None)
    if ns.problems < 1 or ns.max_steps < 1:
        raise LCMError(f"--problems and --max-steps must be >= 1 (got {ns.problems}, {ns.max_steps})")
    from lcm.eval.compare import test_documents

    # unlike the frontier, no corpus check: systems in two spaces are trained on two corpora (two encoders) of the
    # same problems, so the recorded corpus keys differ by design; pass the data overrides they were trained with
    docs = test_documents(ns.config, ns.overrides, ns.problems)
    if not docs or any(d.answer is None for d in docs):
        raise LCMError(f"{ns.config} holds out no problems with answers: the trace needs `#### answer` per problem")
    report = {"config": ns.config, "overrides": ns.overrides, "problems": len(docs), "steps": sum(len(d.steps) for d in docs),
              "max_steps": ns.max_steps,
              "systems": {name: trace_system(c, dec, docs, ns.max_steps) for name, (c, dec) in systems.items()}}
    ns.out.mkdir(parents=True, exist_ok=True)
    write_json(ns.out / "trace.json", report)
    with atomic_path(ns.out / "trace.md") as tmp:
        tmp.write_text(markdown(report), encoding="utf-8")
    print(markdown(report))
    print(f"wrote {ns.out}/trace.json, trace.md")


if __name__ == "__main__":
    import sys

    from lcm.eval.cli import main as lcm_main

    lcm_main(["eval", "trace", *sys.argv[1:]])
