"""Text in, reasoning steps out: a trained concept model + frozen encoder + sentence bank."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from lcm.checkpoint import load_checkpoint, model_from_checkpoint
from lcm.concepts import DEFAULT_EOT_TEXT
from lcm.decoding import ConceptDecoder, HybridDecoder, RetrievalDecoder
from lcm.encoders.base import Encoder, encoder_from_config
from lcm.errors import LCMError
from lcm.module import ConceptLM
from lcm.retrieval import SentenceBank
from lcm.text import cap_length, split_sentences

StopReason = Literal["end_of_text", "repetition", "max_steps"]


@dataclass
class Step:
    text: str
    embedding: np.ndarray  # (D,) the model's predicted (de-normalized) concept
    score: float  # round-trip cosine: the decoded text's encoder embedding vs the prediction
    source: str = "retrieved"  # "retrieved" from a bank, "generated" by the sentence decoder, "supplied" (a user's plan)
    paragraph: int = 0
    is_plan: bool = False


@dataclass
class _State:
    at_paragraph_start: bool
    paragraph: int = 0
    paragraph_steps: int = 0


@dataclass
class Generation:
    problem: str
    steps: list[Step] = field(default_factory=list)  # plans (is_plan=True) and steps, in order
    stop_reason: StopReason = "max_steps"
    breaks_predicted: int = 0  # planning: paragraph ends the model predicted
    breaks_forced: int = 0  # planning: paragraph ends forced by max_paragraph_steps
    calls: int = 0  # concept-model predictions made for this solution (one per loop step, the stopping one too)
    prompt_concepts: int = 0  # leading entries of `inputs` that are the problem's sentences
    inputs: list[np.ndarray] = field(default_factory=list, repr=False)  # every concept fed to the model (D,)

    @property
    def paragraphs(self) -> list[list[Step]]:
        out: list[list[Step]] = []
        for s in self.steps:
            while len(out) <= s.paragraph:
                out.append([])
            out[s.paragraph].append(s)
        return out

    @property
    def text(self) -> str:
        return "\n".join(s.text for s in self.steps)


def format_generation(gen: Generation) -> list[str]:
    """Readable lines: plans as paragraph headings, numbered steps with their cosine."""
    lines, n = [], 0
    for s in gen.steps:
        if s.is_plan:
            tag = ", supplied" if s.source == "supplied" else ""
            lines.append(f"  [plan {s.paragraph + 1}] {s.text}  (cos {s.score:.2f}{tag})")
        else:
            n += 1
            tag = ", generated" if s.source == "generated" else ""
            lines.append(f"  {n:2d}. {s.text}  (cos {s.score:.2f}{tag})")
    return lines


def concept_model_class(meta: dict) -> type[ConceptLM]:
    """The LightningModule class a checkpoint was written by (Base-LCM when it does not say)."""
    import importlib

    module, _, name = meta.get("model_class", "lcm.module.ConceptLM").rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise LCMError(f"checkpoint names a model class {meta.get('model_class')!r} this install does not have") from e
    if not (isinstance(cls, type) and issubclass(cls, ConceptLM)):
        raise LCMError(f"checkpoint model class {meta.get('model_class')!r} is not a concept model")
    return cls


class ConceptGenerator:
    """Generates reasoning steps by predicting concepts and reading them out through the sentence bank.

    Args:
        model: trained `ConceptLM`.
        encoder: the encoder the model was trained with (encodes the problem sentences).
        bank: sentence bank the predictions are decoded against.
        eot_text: end-of-text sentence; when its cosine to a prediction reaches `eot_threshold`, or it is
            the retrieved sentence, generation stops.
        max_chars: sentence cap used when the model was trained (problem text is split the same way).
        plan_bank: planning models: the training plans a predicted plan is decoded against.
        decoder: how predicted steps become text (`lcm.decoding`); default: retrieval from `bank`.
            Plans are always read out through the plan bank.
    """

    def __init__(self, model: ConceptLM, encoder: Encoder, bank: SentenceBank, eot_text: str = DEFAULT_EOT_TEXT,
                 max_chars: int = 256, device: str | torch.device = "cpu", plan_bank: SentenceBank | None = None,
                 decoder: ConceptDecoder | None = None):
        decoder = decoder if decoder is not None else RetrievalDecoder(bank)
        for name, part in (("sentence bank", bank), ("decoder", decoder)):
            if part.encoder_id != encoder.id:
                raise LCMError(f"encoder {encoder.id!r} does not match the {name}'s {part.encoder_id!r}")
            if part.dim != model.arch.embed_dim:
                raise LCMError(f"{name} dimension {part.dim} != model dimension {model.arch.embed_dim}")
        try:
            self.model = model.to(device).eval()
        except (RuntimeError, AssertionError) as e:  # e.g. device="cuda" on a machine without CUDA
            raise LCMError(f"cannot use device {device!r}: {str(e).splitlines()[0][:200]}") from e
        self.encoder = encoder
        self.bank = bank
        self.decoder = decoder
        self.eot_text = eot_text
        self.max_chars = max_chars
        self.device = torch.device(device)
        self.plan_bank = plan_bank
        self.planning = bool(model.meta.get("planning"))
        if self.planning and plan_bank is None:
            raise LCMError("this model was trained with planning and needs its plan bank (checkpoints/plan_bank)")

    @classmethod
    def from_checkpoint(cls, path: str | Path, bank: str | Path | None = None, encoder: Encoder | None = None,
                        device: str = "cpu", decoder: str | Path | ConceptDecoder | None = None,
                        **hybrid) -> "ConceptGenerator":
        """Load a `lcm fit` checkpoint; the bank defaults to `<checkpoint folder>/bank`.

        `decoder`: a `ConceptDecoder`, or the path of a sentence-decoder checkpoint, which becomes a
        `HybridDecoder` over the bank (`hybrid` keywords: k, threshold, beam). Default: retrieval only.
        """
        ckpt = load_checkpoint(path)
        meta = ckpt.get("lcm") or {}
        if meta.get("kind") == "decoder":
            raise LCMError(f"{path} is a sentence-decoder checkpoint; pass a concept model as the checkpoint and "
                           "this one as decoder= (lcm generate --decoder)")
        if not meta.get("encoder_id"):
            raise LCMError(f"checkpoint {path} has no encoder record; it was not written by `lcm fit`")
        model = model_from_checkpoint(concept_model_class(meta), ckpt, path)
        model.meta = meta
        if encoder is None:
            try:
                encoder = encoder_from_config(meta["encoder"])
            except (KeyError, ImportError, AttributeError, TypeError) as e:
                raise LCMError(f"cannot rebuild the encoder recorded in {path} ({type(e).__name__}: {e}); "
                               "pass encoder=... explicitly") from e
        if encoder.id != meta["encoder_id"] or encoder.dim != model.arch.embed_dim:
            raise LCMError(f"encoder {encoder.id!r} (dim {encoder.dim}) differs from the checkpoint's "
                           f"{meta['encoder_id']!r} (dim {model.arch.embed_dim})")
        bank_dir = Path(bank) if bank is not None else Path(path).parent / "bank"
        sentence_bank = SentenceBank.load(bank_dir, encoder_id=encoder.id, dim=model.arch.embed_dim)
        plan_bank = (SentenceBank.load(bank_dir.parent / "plan_bank", encoder_id=encoder.id, dim=model.arch.embed_dim)
                     if meta.get("planning") else None)
        if isinstance(decoder, (str, Path)):
            from lcm.decoder import SentenceDecoderLM

            decoder = HybridDecoder(sentence_bank, SentenceDecoderLM.from_checkpoint(decoder, device=device), encoder,
                                    **hybrid)
        return cls(model, encoder, sentence_bank, eot_text=meta.get("eot_text", DEFAULT_EOT_TEXT),
                   max_chars=meta.get("max_chars", 256), device=device, plan_bank=plan_bank, decoder=decoder)

    def prompt_concepts(self, problem: str) -> list[str]:
        sentences = [p for s in split_sentences(problem) for p in cap_length(s, self.max_chars)]
        if not sentences:
            raise LCMError("the problem text is empty")
        return sentences

    @torch.no_grad()
    def generate(self, problems: str | list[str], max_steps: int = 16, eot_threshold: float = 0.9,
                 feedback: Literal["decoded", "predicted", "retrieved"] = "decoded", stop_on_repeat: bool = True,
                 plans: list[str] | list[list[str]] | None = None, break_threshold: float = 0.9,
                 max_paragraph_steps: int = 9, num_samples: int = 1, seed: int | None = None, noise: float = 0.0,
                 guidance: float | None = None, diffusion_steps: int | None = None):
        """Generate steps for one problem (returns a `Generation`) or a batch (returns a list).

        With `num_samples=k > 1`, k sampled reasoning paths per problem: a list of k `Generation`s for one
        problem, a list of such lists for a batch. All samples of all problems share one forward per step.

        Args:
            max_steps: cap on generated steps (plans included) per problem.
            eot_threshold: cosine to the end-of-text concept at which a prediction means "stop".
            feedback: feed back the decoded sentence's encoder embedding ("decoded", default: "snap", keeps
                inputs on the data manifold; "retrieved" is its old name) or the raw predicted vector.
            stop_on_repeat: stop when the decoded step equals an earlier step of the same solution.
            plans: planning models only: plan sentences to steer generation, used in order as the plans of
                paragraphs 1, 2, ... (later paragraphs are planned by the model). One list for a single
                problem, or one list per problem.
            break_threshold: planning: cosine to the break concept at which the paragraph ends.
            max_paragraph_steps: planning: steps after which a break is forced (counted in `breaks_forced`).
            num_samples: sampled paths per problem (see above).
            seed: seed of all sampling noise (same call + same seed = same output); None = fresh noise.
            noise: Base-LCM only: sample by adding N(0, noise^2) to each prediction in normalized space (Base-LCM
                is otherwise deterministic: its k samples are then identical).
            guidance, diffusion_steps: diffusion models only: override the checkpoint's guidance scale / DDIM steps.
        """
        if num_samples < 1:
            raise LCMError(f"num_samples must be >= 1, not {num_samples}")
        single = isinstance(problems, str)
        problems = [problems] if single else list(problems)
        if not problems:
            return []
        plan_lists = self._plan_lists(plans, single, len(problems))
        prompts = [self.prompt_concepts(p) for p in problems]
        supplied = [s for ps in plan_lists for s in ps]
        emb = torch.from_numpy(self.encoder.encode([s for p in prompts for s in p] + supplied))  # (S, D)
        if not torch.isfinite(emb).all():
            raise LCMError("the encoder returned NaN/inf for the problem text")
        # one encoder call for everything, then cut back into per-problem lists of (D,) vectors
        chunks = list(torch.split(emb, [len(p) for p in prompts] + [len(ps) for ps in plan_lists]))
        seqs = [list(c) for c in chunks[: len(prompts)]]
        plan_vecs = [list(c) for c in chunks[len(prompts):]]
        n_problems, k = len(problems), num_samples
        if k > 1:  # every sample is a row of the same batch
            problems, plan_lists = [p for p in problems for _ in range(k)], [p for p in plan_lists for _ in range(k)]
            seqs, plan_vecs = [list(x) for x in seqs for _ in range(k)], [x for x in plan_vecs for _ in range(k)]
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        sampling = {"noise": noise, "guidance": guidance, "steps": diffusion_steps}
        max_len = self.model.arch.max_seq_len
        if max(len(s) for s in seqs) >= max_len:
            raise LCMError(f"problem has more sentences than the model's context ({max_len} concepts)")
        results = [Generation(problem=p) for p in problems]
        states = [_State(at_paragraph_start=self.planning) for _ in problems]
        active = list(range(len(problems)))
        eot = self.model.eot_embedding.to(self.device)
        brk = self.model.break_embedding.to(self.device)
        if feedback not in ("decoded", "retrieved", "predicted"):
            raise LCMError(f"feedback must be 'decoded' or 'predicted', not {feedback!r}")
        while active:
            preds = self._next_concepts([seqs[i] for i in active], generator, sampling)  # (A, D)
            for i in active:
                results[i].calls += 1
            eot_cos = F.cosine_similarity(preds, eot.expand_as(preds), dim=-1).cpu().numpy()
            brk_cos = F.cosine_similarity(preds, brk.expand_as(preds), dim=-1).cpu().numpy()
            pred_np = preds.cpu().numpy()
            still, step_rows = [], []

            def advance(i: int) -> None:
                if len(results[i].steps) >= max_steps or len(seqs[i]) >= max_len:
                    results[i].stop_reason = "max_steps"
                else:
                    still.append(i)

            for j, i in enumerate(active):
                gen, st = results[i], states[i]
                if st.at_paragraph_start and st.paragraph < len(plan_vecs[i]):  # the user's plan
                    vec = plan_vecs[i][st.paragraph]
                    score = float(F.cosine_similarity(vec, preds[j].cpu(), dim=0))
                    gen.steps.append(Step(plan_lists[i][st.paragraph], pred_np[j], score, "supplied",
                                          st.paragraph, is_plan=True))
                    st.at_paragraph_start = False
                    seqs[i].append(vec)
                elif eot_cos[j] >= eot_threshold:
                    gen.stop_reason = "end_of_text"
                    continue
                elif st.at_paragraph_start:  # the model's plan, read out through the plan bank
                    scores, ids = self.plan_bank.search(pred_np[j:j + 1], k=1)
                    row = int(ids[0, 0])
                    gen.steps.append(Step(self.plan_bank.texts[row], pred_np[j], float(scores[0, 0]),
                                          "retrieved", st.paragraph, is_plan=True))
                    st.at_paragraph_start = False
                    seqs[i].append(self._feedback(pred_np[j], self.plan_bank.embeddings([row])[0], feedback))
                # before the step read-out: a predicted break's nearest bank sentence is often end-of-text
                elif self.planning and (brk_cos[j] >= break_threshold or st.paragraph_steps >= max_paragraph_steps):
                    if brk_cos[j] >= break_threshold:
                        gen.breaks_predicted += 1
                    else:
                        gen.breaks_forced += 1
                    st.paragraph, st.paragraph_steps, st.at_paragraph_start = st.paragraph + 1, 0, True
                    seqs[i].append(brk.cpu())
                else:
                    step_rows.append(j)  # decoded below, all rows in one call
                    continue
                advance(i)
            decoded = self.decoder.decode(pred_np[step_rows]) if step_rows else []
            for j, d in zip(step_rows, decoded):
                i = active[j]
                gen, st = results[i], states[i]
                if d.text == self.eot_text:
                    gen.stop_reason = "end_of_text"
                    continue
                if stop_on_repeat and any(s.text == d.text for s in gen.steps if not s.is_plan):
                    gen.stop_reason = "repetition"
                    continue
                gen.steps.append(Step(d.text, pred_np[j], d.score, d.source, st.paragraph))
                st.paragraph_steps += 1
                seqs[i].append(self._feedback(pred_np[j], d.embedding, feedback))
                advance(i)
            active = sorted(still)
        for gen, seq, prompt in zip(results, seqs, (p for p in prompts for _ in range(k))):
            gen.inputs, gen.prompt_concepts = [v.numpy() for v in seq], len(prompt)
        if k > 1:
            grouped = [results[i * k:(i + 1) * k] for i in range(n_problems)]
            return grouped[0] if single else grouped
        return results[0] if single else results

    @staticmethod
    def _feedback(pred: np.ndarray, decoded: np.ndarray, mode: str) -> torch.Tensor:
        """The next input: the decoded text's embedding ("decoded") or the raw prediction ("predicted")."""
        return torch.from_numpy(np.array(pred if mode == "predicted" else decoded, dtype=np.float32))

    def _plan_lists(self, plans, single: bool, n: int) -> list[list[str]]:
        if plans is None:
            return [[] for _ in range(n)]
        if not self.planning:
            raise LCMError("plans= needs a model trained with planning (data.planning: true)")
        if not single and not all(isinstance(p, (list, tuple)) for p in plans):
            raise LCMError("for several problems, plans must be one list of plan sentences per problem")
        lists = [list(plans)] if single else [list(p) for p in plans]
        if len(lists) != n or not all(isinstance(s, str) and s.strip() for p in lists for s in p):
            raise LCMError(f"plans must be non-empty sentences: one list for one problem, or one list per problem "
                           f"({n} problems)")
        return lists

    def _next_concepts(self, seqs: list[list[torch.Tensor]], generator: torch.Generator | None = None,
                       sampling: dict | None = None) -> torch.Tensor:
        """Right-padded batch; the model's (possibly sampled) concept after each sequence's last one. (A, D)"""
        lengths = torch.tensor([len(s) for s in seqs])
        x = torch.zeros(len(seqs), int(lengths.max()), self.model.arch.embed_dim)
        for b, s in enumerate(seqs):
            x[b, : len(s)] = torch.stack(s)
        return self.model.next_concept(x.to(self.device), lengths, generator,
                                       **{k: v for k, v in (sampling or {}).items() if v is not None})
