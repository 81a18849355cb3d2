"""Text in, reasoning steps out: a trained concept model + frozen encoder + sentence bank.

`ConceptGenerator.generate` is the batched driver: it encodes the problems (and supplied plans) once, then
predicts the next concept of every active row in one `model.next_concept` forward per step and hands each
row's prediction to the per-row rule (`lcm.generation_step.StepRule`).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from lcm.checkpoint import load_checkpoint, model_from_checkpoint, on_device
from lcm.concepts import DEFAULT_BREAK_TEXT, DEFAULT_EOT_TEXT
from lcm.decoding import ConceptDecoder, Decoded, GenerativeDecoder, HybridDecoder, RetrievalDecoder
from lcm.encoders.base import Encoder, encoder_from_config
from lcm.errors import LCMError
from lcm.generation_step import Generation, Kind, Row, Step, StepRule, StopReason, format_generation
from lcm.module import ConceptLM
from lcm.plan_vectors import plan_vector_rule
from lcm.retrieval import SentenceBank
from lcm.sampling import SamplingSettings, sampling_settings
from lcm.step_policy import step_entropy
from lcm.text import split_and_cap, split_lines

PROMPT_FORMATS = ("sentences", "lines", "auto")

__all__ = ["ConceptGenerator", "Generation", "Step", "StopReason", "concept_model_class", "format_generation"]


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


def text_decoder(path: str | Path, bank: SentenceBank, encoder: Encoder, exclude: tuple[str, ...], device: str,
                 k: int = 4, threshold: float = 0.95, beam: int = 1) -> ConceptDecoder:
    """The read-out of a sentence-decoder or sentence-autoencoder checkpoint at `path`: hybrid with the bank (a
    retrieval hit at cosine >= `threshold`, else the closest of the top-`k` bank sentences and the decoded text), or
    with `k` = 0 the decoder alone (every step written out, as an autoencoder space wants: its bank only holds the
    training sentences, with their numbers)."""
    from lcm.autoencoder import load_sentence_decoder

    model = load_sentence_decoder(path, device=device)
    if k == 0:
        return GenerativeDecoder(model, encoder, beam=beam)
    return HybridDecoder(bank, model, encoder, exclude=exclude, k=k, threshold=threshold, beam=beam)


class ConceptGenerator:
    """Generates reasoning steps by predicting concepts and reading them out through the sentence bank.

    Args:
        model: trained `ConceptLM`.
        encoder: the encoder the model was trained with (encodes the problem sentences).
        bank: sentence bank the predictions are decoded against.
        eot_text: end-of-text sentence (its concept is the model's `eot_embedding`); never read out as a step.
        break_text: planning models: the break sentence (default "Next paragraph."); never read out as a step.
        max_chars: sentence cap used when the model was trained (problem text is split the same way).
        plan_bank: planning models: the training plans a predicted plan is decoded against.
        decoder: how predicted steps become text (`lcm.decoding`); default: retrieval from `bank` without the
            end-of-text and break sentences. Plans are always read out through the plan bank.
        prompt_format: how problem text becomes prompt concepts, as in training: "sentences" (pysbd), "lines"
            (one concept per line) or "auto" (lines when the text has line breaks, else sentences).
    """

    def __init__(self, model: ConceptLM, encoder: Encoder, bank: SentenceBank, eot_text: str = DEFAULT_EOT_TEXT,
                 max_chars: int = 256, device: str | torch.device = "cpu", plan_bank: SentenceBank | None = None,
                 decoder: ConceptDecoder | None = None, prompt_format: str = "sentences", break_text: str | None = None):
        if prompt_format not in PROMPT_FORMATS:
            raise LCMError(f"prompt_format must be one of {', '.join(PROMPT_FORMATS)}, not {prompt_format!r}")
        self.planning = bool(model.meta.get("planning"))
        self.boundary_texts = (eot_text, break_text or DEFAULT_BREAK_TEXT) if self.planning else (eot_text,)
        decoder = decoder if decoder is not None else RetrievalDecoder(bank, exclude=self.boundary_texts)
        parts = {"sentence bank": bank, "decoder": decoder, "plan bank": plan_bank}
        for name, part in ((k, v) for k, v in parts.items() if v is not None):
            if part.encoder_id != encoder.id:
                raise LCMError(f"encoder {encoder.id!r} does not match the {name}'s {part.encoder_id!r}")
            if part.dim != model.arch.embed_dim:
                raise LCMError(f"{name} dimension {part.dim} != model dimension {model.arch.embed_dim}")
        self.model = on_device(model, device)
        self.encoder = encoder
        self.bank = bank
        self.decoder = decoder
        self.eot_text = eot_text
        self.max_chars = max_chars
        self.prompt_format = prompt_format
        self.device = torch.device(device)
        self.plan_bank = plan_bank
        self.plan_decoder = RetrievalDecoder(plan_bank) if plan_bank is not None else None  # the model's plans
        self.boundary_rows = bank.rows_of(self.boundary_texts)  # bank rows a step is never read out as
        # the default read-out is the boundary rule's own search (nearest bank sentence, boundaries excluded): its
        # hit is reused instead of searching the bank a second time
        self._retrieval_reads_rule = (isinstance(self.decoder, RetrievalDecoder) and self.decoder.bank is bank
                                      and np.array_equal(np.sort(self.decoder.exclude), np.sort(self.boundary_rows)))
        self._bank_vectors: torch.Tensor | None = None  # (N, D) the bank as a tensor, for the step policy
        if self.planning and plan_bank is None:
            raise LCMError("this model was trained with planning and needs its plan bank (checkpoints/plan_bank)")

    @classmethod
    def from_checkpoint(cls, path: str | Path, bank: str | Path | None = None, encoder: Encoder | None = None,
                        device: str = "cpu", decoder: str | Path | ConceptDecoder | None = None,
                        **hybrid) -> "ConceptGenerator":
        """Load a `lcm fit` checkpoint; the bank defaults to `<checkpoint folder>/bank`.

        `decoder`: a `ConceptDecoder`, or the path of a sentence-decoder or sentence-autoencoder checkpoint, which
        becomes a `HybridDecoder` over the bank, or the decoder alone with k=0 (`text_decoder`; `hybrid` keywords:
        k, threshold, beam). Default: retrieval only.
        """
        ckpt = load_checkpoint(path)
        meta = ckpt.get("lcm") or {}
        if meta.get("kind") == "decoder":
            raise LCMError(f"{path} is a sentence-decoder checkpoint; pass a concept model as the checkpoint and "
                           "this one as decoder= (lcm generate --decoder)")
        if not meta.get("encoder_id"):
            raise LCMError(f"checkpoint {path} has no encoder record; it was not written by `lcm fit`")
        model = model_from_checkpoint(concept_model_class(meta), ckpt, path)
        bank_dir = Path(bank) if bank is not None else Path(path).parent / "bank"
        return cls._assemble(model, meta, path, bank_dir, encoder, device, decoder, hybrid)

    @classmethod
    def from_pretrained(cls, folder: str | Path, encoder: Encoder | None = None, device: str = "cpu",
                        decoder: str | Path | ConceptDecoder | None = None, **hybrid) -> "ConceptGenerator":
        """Load a folder written by `lcm export` (`lcm.pretrained`): safetensors weights, JSON config, the banks
        inside it. Other arguments as `from_checkpoint`."""
        from lcm.pretrained import load_pretrained

        model, meta = load_pretrained(folder, concept_model_class)
        return cls._assemble(model, meta, folder, Path(folder) / "bank", encoder, device, decoder, hybrid)

    @classmethod
    def _assemble(cls, model: ConceptLM, meta: dict, path, bank_dir: Path, encoder: Encoder | None, device: str,
                  decoder, hybrid: dict) -> "ConceptGenerator":
        """A loaded model + its recorded encoder, banks (`bank_dir`, `plan_bank` beside it) and read-out."""
        model.on_load_checkpoint({"lcm": meta})  # its record: meta, the step policy's tau
        if encoder is None:
            try:
                encoder = encoder_from_config(meta["encoder"])
            except (KeyError, ImportError, AttributeError, TypeError) as e:
                raise LCMError(f"cannot rebuild the encoder recorded in {path} ({type(e).__name__}: {e}); "
                               "pass encoder=... explicitly") from e
        if encoder.id != meta["encoder_id"] or encoder.dim != model.arch.embed_dim:
            raise LCMError(f"encoder {encoder.id!r} (dim {encoder.dim}) differs from the checkpoint's "
                           f"{meta['encoder_id']!r} (dim {model.arch.embed_dim})")
        corpus = meta.get("corpus")  # the bank must hold the sentences of the corpus the model was trained on
        sentence_bank = SentenceBank.load(bank_dir, encoder_id=encoder.id, dim=model.arch.embed_dim, corpus=corpus)
        plan_bank = (SentenceBank.load(bank_dir.parent / "plan_bank", encoder_id=encoder.id, dim=model.arch.embed_dim,
                                       corpus=corpus)
                     if meta.get("planning") else None)
        eot_text, break_text = meta.get("eot_text", DEFAULT_EOT_TEXT), meta.get("break_text") or DEFAULT_BREAK_TEXT
        if isinstance(decoder, (str, Path)):
            decoder = text_decoder(decoder, sentence_bank, encoder, (eot_text, break_text), device, **hybrid)
        return cls(model, encoder, sentence_bank, eot_text=eot_text, max_chars=meta.get("max_chars", 256),
                   device=device, plan_bank=plan_bank, decoder=decoder, prompt_format=meta.get("prompt_format", "sentences"),
                   break_text=break_text)

    def prompt_concepts(self, problem: str, which: str = "the problem text") -> list[str]:
        """A problem's text -> its prompt concepts' text (split by `prompt_format`, capped like training text)."""
        sentences = split_and_cap(problem, self.max_chars, self.prompt_format)
        if not sentences:
            raise LCMError(f"{which} is empty")
        return sentences

    @staticmethod
    def _problem_list(problems) -> list[str | list[str]]:
        """`generate`'s problems argument -> a list of problems, each a string or a list of its prompt sentences;
        or one `LCMError` line saying what is wrong."""
        if isinstance(problems, str):
            return [problems]
        if not isinstance(problems, (list, tuple)):
            raise LCMError(f"problems must be a string or a list of strings, not {type(problems).__name__}")

        def ok(p) -> bool:
            return isinstance(p, str) or (isinstance(p, (list, tuple)) and all(isinstance(s, str) for s in p))

        bad = [i for i, p in enumerate(problems, 1) if not ok(p)]
        if bad:
            raise LCMError(f"problem {bad[0]} of {len(problems)} is a {type(problems[bad[0] - 1]).__name__}, "
                           "not a string (or a list of its prompt sentences)")
        return [p if isinstance(p, str) else list(p) for p in problems]

    def _prompt(self, problem: str | list[str], which: str) -> list[str]:
        """A problem's prompt concepts: split from its text, or its sentences as given (already split the way
        training split them, e.g. a held-out `Document.prompt`: a line-structured prompt stays line by line)."""
        if isinstance(problem, str):
            return self.prompt_concepts(problem, which)
        sentences = [s for s in problem if s.strip()]
        if not sentences:
            raise LCMError(f"{which} is empty")
        return sentences

    def plan_sentences(self, plan: str) -> list[str]:
        """A supplied plan's text -> its sentences (each line split into sentences, capped like training text)."""
        return [s for line in split_lines(plan) for s in split_and_cap(line, self.max_chars)]

    @torch.no_grad()
    def generate(self, problems: str | list[str], max_steps: int = 16, eot_threshold: float | None = None,
                 feedback: Literal["decoded", "predicted", "retrieved"] = "decoded", stop_on_repeat: bool = True,
                 plans: list[str] | list[list[str]] | None = None, break_threshold: float | None = None,
                 max_paragraph_steps: int = 9, num_samples: int = 1, seed: int | None = None,
                 noise: float | None = None, guidance: float | None = None, ddim_steps: int | None = None,
                 eta: float | None = None, plan_source: str | None = None):
        """Generate steps for one problem (returns a `Generation`) or a batch (returns a list).

        With `num_samples=k > 1`, k sampled reasoning paths per problem: a list of k `Generation`s for one
        problem, a list of such lists for a batch. All samples of all problems share one forward per step.

        Each prediction is end-of-text, a break (planning) or a step by the argmax of its cosines to the
        end-of-text concept, the break concept and the best bank sentence (`StepRule.classify`).

        Args:
            problems: a problem's text (split into prompt concepts as training split its source's prompts), or a
                list of its prompt sentences used as they are; or a list of such problems.
            max_steps: cap on generated steps (plans included) per problem.
            eot_threshold: None (default): end-of-text when the argmax says so. A number: also a floor on the
                cosine to the end-of-text concept (above 1: never stop by end-of-text).
            feedback: feed back the decoded sentence's encoder embedding ("decoded", default: "snap", keeps
                inputs on the data manifold; "retrieved" is its old name) or the raw predicted vector.
            stop_on_repeat: stop when the solution starts looping: its last L decoded steps repeat the L
                before them, L <= 4 (`lcm.generation_step.loops`); a step that recurs after others goes on.
            plans: planning models only: plan texts to steer generation, used in order as the plans of
                paragraphs 1, 2, ... (later paragraphs are planned by the model). One list for a single
                problem, or one list per problem. A plan's sentences become one plan concept by the vector
                rule of the planner the model was trained with (`lcm.plan_vectors`), as training plans were.
            break_threshold: planning: None (default) or a floor on the cosine to the break concept, as
                `eot_threshold`.
            max_paragraph_steps: planning: steps after which a break is forced (counted in `breaks_forced`).
            num_samples: sampled paths per problem (see above).
            seed: seed of all sampling noise (same call + same seed = same output); None = fresh noise.
            noise: Base-LCM only: sample by adding N(0, noise^2) to each prediction in normalized space (Base-LCM
                is otherwise deterministic: its k samples are then identical).
            guidance, ddim_steps, eta: diffusion models only: override the checkpoint's guidance scale / DDIM steps /
                DDIM eta (0: deterministic given the starting noise; > 0 adds fresh noise at every DDIM step).
            plan_source: diffusion planning models only: "sampled" or "regressed" plans (by the context head of a
                model trained with `diffusion.context_loss` > 0); default the checkpoint's.
                A sampling option the loaded model does not use raises `LCMError` (`lcm.sampling`).
        """
        if num_samples < 1:
            raise LCMError(f"num_samples must be >= 1, not {num_samples}")
        settings = sampling_settings(self.model, noise=noise, guidance=guidance, ddim_steps=ddim_steps, eta=eta,
                                     plan_source=plan_source)
        if plan_source is not None and not self.planning:
            raise LCMError("plan_source applies to models trained with planning; this one has no plans")
        if plan_source is not None:  # only diffusion models take it (checked above): refuse before any step
            self.model.regresses_plans(plan_source)
        rule = StepRule(self.eot_text, self.model.break_embedding.detach().cpu().clone(), self.planning,
                        max_steps=max_steps, max_len=self.model.arch.max_seq_len, eot_threshold=eot_threshold,
                        break_threshold=break_threshold, max_paragraph_steps=max_paragraph_steps,
                        stop_on_repeat=stop_on_repeat, feedback=feedback)
        single = isinstance(problems, str)
        problems = self._problem_list(problems)
        if not problems:
            return []
        rows = self._rows(problems, self._plan_lists(plans, single, len(problems)), num_samples)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self._drive(rows, rule, generator, settings)
        results = [row.finish() for row in rows]
        if num_samples > 1:
            grouped = [results[i:i + num_samples] for i in range(0, len(results), num_samples)]
            return grouped[0] if single else grouped
        return results[0] if single else results

    def _rows(self, problems: list[str], plan_lists: list[list[str]], k: int) -> list[Row]:
        """k rows per problem (its samples, adjacent), from one encoder call for every prompt and plan sentence."""
        n = len(problems)
        prompts = [self._prompt(p, "the problem text" if n == 1 else f"problem {i} of {n}")
                   for i, p in enumerate(problems, 1)]
        plan_texts = [[self.plan_sentences(plan) for plan in plans] for plans in plan_lists]
        sentences = [s for p in prompts for s in p] + [s for plans in plan_texts for plan in plans for s in plan]
        emb = torch.from_numpy(self.encoder.encode(sentences))  # (S, D)
        if not torch.isfinite(emb).all():
            raise LCMError("the encoder returned NaN/inf for the problem text")
        chunks = iter(torch.split(emb, [len(p) for p in prompts] + [len(p) for plans in plan_texts for p in plans]))
        seqs = [list(next(chunks)) for _ in prompts]  # per problem: its sentences' (D,) concepts
        plan_rule = plan_vector_rule(self.model.meta.get("planner")) if any(plan_lists) else None
        plan_vecs = [[torch.from_numpy(plan_rule(next(chunks).numpy())) for _ in plans] for plans in plan_lists]
        max_len = self.model.arch.max_seq_len
        if max(len(s) for s in seqs) >= max_len:
            raise LCMError(f"problem has more sentences than the model's context ({max_len} concepts)")
        texts = [p if isinstance(p, str) else "\n".join(p) for p in problems]
        return [Row(Generation(text, prompt_concepts=len(seq)), list(seq), list(zip(plans, vecs)),
                    at_paragraph_start=self.planning)
                for text, seq, plans, vecs in zip(texts, seqs, plan_lists, plan_vecs) for _ in range(k)]

    def _drive(self, rows: list[Row], rule: StepRule, generator: torch.Generator | None,
               settings: SamplingSettings) -> None:
        """Step every row until it stops: one batched forward per step for all active rows, then the rule per row."""
        eot = self.model.eot_embedding.to(self.device)
        brk = self.model.break_embedding.to(self.device)
        active = list(rows)
        while active:
            plan_rows = torch.tensor([r.at_paragraph_start for r in active])
            preds = self._next_concepts([r.inputs for r in active], generator, settings, plan_rows)  # (A, D)
            eot_cos = F.cosine_similarity(preds, eot.expand_as(preds), dim=-1).cpu().numpy()
            brk_cos = F.cosine_similarity(preds, brk.expand_as(preds), dim=-1).cpu().numpy()
            pred_np = preds.cpu().numpy()
            step_cos, step_ids = self._best_sentences(pred_np, [r.at_paragraph_start for r in active])
            for r, h in zip(active, self._step_entropies(preds)):
                r.gen.entropies.append(h)
            kinds = [rule.classify(r, e, b, s) for r, e, b, s in zip(active, eot_cos, brk_cos, step_cos)]
            readouts = self._read_out(pred_np, kinds, (step_cos, step_ids))
            active = [r for r, kind, p, d in zip(active, kinds, pred_np, readouts) if rule.apply(r, kind, p, d)]

    def _step_entropies(self, preds: torch.Tensor) -> list[float]:
        """Entropy (nats) of the step policy over the sentence bank for each prediction (A, D), at the tau fitted
        at validation (`lcm.step_policy`); [] for a model without one."""
        tau = float(self.model.step_tau)
        if not (self.model.has_step_policy and np.isfinite(tau)):
            return []
        if self._bank_vectors is None:
            with warnings.catch_warnings():  # a read-only memory map: the tensor is only read, so share it
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                self._bank_vectors = torch.from_numpy(self.bank.vectors)  # (N, D)
        return step_entropy(preds.float().cpu(), self._bank_vectors, tau).tolist()

    def _best_sentences(self, preds: np.ndarray, at_paragraph_start: list[bool]) -> tuple[np.ndarray, np.ndarray]:
        """Per row, the best sentence its prediction could be read out as -- the plan bank's at a paragraph start,
        else the sentence bank's without the end-of-text and break sentences: its cosine (A,) and its row in its
        bank (A,). preds (A, D)."""
        cos, ids = np.empty(len(preds), dtype=np.float32), np.full(len(preds), -1, dtype=np.int64)
        start = np.asarray(at_paragraph_start, dtype=bool)
        for rows, bank, exclude in ((~start, self.bank, self.boundary_rows), (start, self.plan_bank, ())):
            if rows.any():
                scores, hits = bank.search(preds[rows], k=1, exclude=exclude)
                cos[rows], ids[rows] = scores[:, 0], hits[:, 0]
        return cos, ids

    def _read_out(self, preds: np.ndarray, kinds: list[Kind], best: tuple[np.ndarray, np.ndarray]
                  ) -> list[Decoded | None]:
        """Text for the rows that need it: steps through the decoder (the default retrieval reuses `best`, the
        rule's (cosines, bank rows) from `_best_sentences`: the same search), the model's plans through the plan
        bank (one call each). preds (A, D) -> one `Decoded` or None per row."""
        out: list[Decoded | None] = [None] * len(kinds)
        for kind, decoder in ((Kind.STEP, self.decoder), (Kind.PLAN, self.plan_decoder)):
            rows = [j for j, k in enumerate(kinds) if k is kind]
            if kind is Kind.STEP and self._retrieval_reads_rule:
                decoded = [decoder.hit(best[0][j], int(best[1][j])) for j in rows]
            else:
                decoded = decoder.decode(preds[rows]) if rows else []
            for j, d in zip(rows, decoded):
                out[j] = d
        return out

    def _plan_lists(self, plans, single: bool, n: int) -> list[list[str]]:
        if plans is None:
            return [[] for _ in range(n)]
        if not self.planning:
            raise LCMError("plans= needs a model trained with planning (data.planning: {...})")
        if not single and not all(isinstance(p, (list, tuple)) for p in plans):
            raise LCMError("for several problems, plans must be one list of plan sentences per problem")
        lists = [list(plans)] if single else [list(p) for p in plans]
        if len(lists) != n or not all(isinstance(s, str) and self.plan_sentences(s) for p in lists for s in p):
            raise LCMError(f"plans must be non-empty sentences: one list for one problem, or one list per problem "
                           f"({n} problems)")
        return lists

    def _next_concepts(self, seqs: list[list[torch.Tensor]], generator: torch.Generator | None,
                       settings: SamplingSettings, plan_rows: torch.Tensor) -> torch.Tensor:
        """Right-padded batch; the model's (possibly sampled) concept after each sequence's last one. (A, D)
        plan_rows (A,) bool: rows at a paragraph start (a diffusion model may regress its plans there)."""
        lengths = torch.tensor([len(s) for s in seqs])
        x = torch.zeros(len(seqs), int(lengths.max()), self.model.arch.embed_dim)
        for b, s in enumerate(seqs):
            x[b, : len(s)] = torch.stack(s)
        return self.model.next_concept(x.to(self.device), lengths, generator, plan_rows=plan_rows,
                                       **settings.model_kwargs())
