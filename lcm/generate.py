"""Text in, reasoning steps out: a trained concept model + frozen encoder + sentence bank."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from lcm.concepts import DEFAULT_EOT_TEXT
from lcm.encoders.base import Encoder, encoder_from_config
from lcm.errors import LCMError
from lcm.module import ConceptLM
from lcm.retrieval import SentenceBank
from lcm.train.segment import cap_length, split_sentences

StopReason = Literal["end_of_text", "repetition", "max_steps"]


@dataclass
class Step:
    text: str
    embedding: np.ndarray  # (D,) the model's predicted (de-normalized) concept
    score: float  # cosine of the decoded text's embedding to the prediction
    source: str = "retrieved"
    paragraph: int = 0
    is_plan: bool = False


@dataclass
class Generation:
    problem: str
    steps: list[Step] = field(default_factory=list)
    stop_reason: StopReason = "max_steps"

    @property
    def text(self) -> str:
        return "\n".join(s.text for s in self.steps)


def load_checkpoint(path: str | Path) -> dict:
    """torch.load with one clear error for a missing, truncated or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise LCMError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - pickle/zip errors of every kind mean the same thing here
        raise LCMError(f"checkpoint {path} is corrupted or not a torch checkpoint ({type(e).__name__})") from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise LCMError(f"checkpoint {path} is not an lcm-trainer checkpoint (no state_dict / hyper_parameters)")
    return ckpt


class ConceptGenerator:
    """Generates reasoning steps by predicting concepts and reading them out through the sentence bank.

    Args:
        model: trained `ConceptLM`.
        encoder: the encoder the model was trained with (encodes the problem sentences).
        bank: sentence bank the predictions are decoded against.
        eot_text: end-of-text sentence; when its cosine to a prediction reaches `eot_threshold`, or it is
            the retrieved sentence, generation stops.
        max_chars: sentence cap used when the model was trained (problem text is split the same way).
    """

    def __init__(self, model: ConceptLM, encoder: Encoder, bank: SentenceBank, eot_text: str = DEFAULT_EOT_TEXT,
                 max_chars: int = 256, device: str | torch.device = "cpu"):
        if encoder.id != bank.encoder_id:
            raise LCMError(f"encoder {encoder.id!r} does not match the sentence bank's {bank.encoder_id!r}")
        if bank.dim != model.arch.embed_dim:
            raise LCMError(f"sentence bank dimension {bank.dim} != model dimension {model.arch.embed_dim}")
        self.model = model.to(device).eval()
        self.encoder = encoder
        self.bank = bank
        self.eot_text = eot_text
        self.max_chars = max_chars
        self.device = torch.device(device)

    @classmethod
    def from_checkpoint(cls, path: str | Path, bank: str | Path | None = None, encoder: Encoder | None = None,
                        device: str = "cpu") -> "ConceptGenerator":
        """Load a `lcm fit` checkpoint; the bank defaults to `<checkpoint folder>/bank`."""
        ckpt = load_checkpoint(path)
        meta = ckpt.get("lcm") or {}
        if not meta.get("encoder_id"):
            raise LCMError(f"checkpoint {path} has no encoder record; it was not written by `lcm fit`")
        model = ConceptLM(**ckpt["hyper_parameters"])
        try:
            model.load_state_dict(ckpt["state_dict"])
        except RuntimeError as e:
            raise LCMError(f"checkpoint {path} does not match its own hyper-parameters: {str(e).splitlines()[0]}") from e
        model.meta = meta
        encoder = encoder if encoder is not None else encoder_from_config(meta["encoder"])
        if encoder.id != meta["encoder_id"] or encoder.dim != model.arch.embed_dim:
            raise LCMError(f"encoder {encoder.id!r} (dim {encoder.dim}) differs from the checkpoint's "
                           f"{meta['encoder_id']!r} (dim {model.arch.embed_dim})")
        bank_dir = Path(bank) if bank is not None else Path(path).parent / "bank"
        sentence_bank = SentenceBank.load(bank_dir, encoder_id=encoder.id, dim=model.arch.embed_dim)
        return cls(model, encoder, sentence_bank, eot_text=meta.get("eot_text", DEFAULT_EOT_TEXT),
                   max_chars=meta.get("max_chars", 256), device=device)

    def prompt_concepts(self, problem: str) -> list[str]:
        sentences = [p for s in split_sentences(problem) for p in cap_length(s, self.max_chars)]
        if not sentences:
            raise LCMError("the problem text is empty")
        return sentences

    @torch.no_grad()
    def generate(self, problems: str | list[str], max_steps: int = 16, eot_threshold: float = 0.9,
                 feedback: Literal["retrieved", "predicted"] = "retrieved",
                 stop_on_repeat: bool = True) -> Generation | list[Generation]:
        """Generate steps for one problem (returns a `Generation`) or a batch (returns a list).

        Args:
            max_steps: hard cap on generated steps per problem.
            eot_threshold: cosine to the end-of-text concept at which a prediction means "stop".
            feedback: feed back the retrieved sentence's embedding ("snap", default: keeps inputs on the
                data manifold) or the raw predicted vector.
            stop_on_repeat: stop when the decoded step equals an earlier step of the same solution.
        """
        single = isinstance(problems, str)
        problems = [problems] if single else list(problems)
        if not problems:
            return []
        prompts = [self.prompt_concepts(p) for p in problems]
        flat = [s for p in prompts for s in p]
        emb = torch.from_numpy(self.encoder.encode(flat))  # (S, D)
        if not torch.isfinite(emb).all():
            raise LCMError("the encoder returned NaN/inf for the problem text")
        seqs, start = [], 0
        for p in prompts:
            seqs.append(list(emb[start:start + len(p)]))
            start += len(p)
        max_len = self.model.arch.max_seq_len
        if max(len(s) for s in seqs) >= max_len:
            raise LCMError(f"problem has more sentences than the model's context ({max_len} concepts)")
        results = [Generation(problem=p) for p in problems]
        active = list(range(len(problems)))
        eot = self.model.eot_embedding.to(self.device)
        for _ in range(max_steps):
            if not active:
                break
            preds = self._next_concepts([seqs[i] for i in active])  # (A, D)
            eot_cos = F.cosine_similarity(preds, eot.expand_as(preds), dim=-1).cpu().numpy()
            pred_np = preds.cpu().numpy()
            scores, ids = self.bank.search(pred_np, k=1)
            still = []
            for j, i in enumerate(active):
                text = self.bank.texts[int(ids[j, 0])]
                gen = results[i]
                if eot_cos[j] >= eot_threshold or text == self.eot_text:
                    gen.stop_reason = "end_of_text"
                elif stop_on_repeat and any(s.text == text for s in gen.steps):
                    gen.stop_reason = "repetition"
                else:
                    gen.steps.append(Step(text=text, embedding=pred_np[j], score=float(scores[j, 0])))
                    nxt = pred_np[j] if feedback == "predicted" else self.bank.embeddings(ids[j, :1])[0]
                    seqs[i].append(torch.from_numpy(np.asarray(nxt, dtype=np.float32)))
                    if len(seqs[i]) < max_len:
                        still.append(i)
                    else:
                        gen.stop_reason = "max_steps"
            active = still
        return results[0] if single else results

    def _next_concepts(self, seqs: list[list[torch.Tensor]]) -> torch.Tensor:
        """Right-padded batch forward; returns the prediction after each sequence's last concept. (A, D)"""
        lengths = torch.tensor([len(s) for s in seqs])
        x = torch.zeros(len(seqs), int(lengths.max()), self.model.arch.embed_dim)
        for b, s in enumerate(seqs):
            x[b, : len(s)] = torch.stack(s)
        pred = self.model(x.to(self.device))  # (A, T, D) raw
        return pred[torch.arange(len(seqs)), lengths.to(self.device) - 1].float()
