"""Token-baseline data: the concept model's documents (same source, same split) rendered as text.

A document becomes `prompt` (its sentences on one line) and `solution` (one step per line, a blank line
between paragraphs): the token model reads the prompt and learns to write the solution.
"""
from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from lcm.handoff import TextData, hand_over
from lcm.train.corpus import CorpusSource
from lcm.train.datamodule import SPLITS, check_split_args, load_documents
from lcm.train.documents import Document
from lcm.train.loaders import SplitLoaders, make_loader


def render_prompt(doc: Document) -> str:
    return " ".join(doc.prompt)


def render_solution(doc: Document) -> str:
    return "\n\n".join("\n".join(p) for p in doc.paragraphs)


def solution_steps(text: str) -> list[str]:
    """A generated solution's reasoning steps: its non-empty lines (the token model's unit of a step)."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def collate_texts(docs: list[Document]) -> dict[str, list[str]]:
    return {"prompt": [render_prompt(d) for d in docs], "solution": [render_solution(d) for d in docs]}


class TokenDataModule(SplitLoaders, L.LightningDataModule):
    """Batches `{"prompt": [B strings], "solution": [B strings]}`; the model tokenizes them.

    Args: as `ConceptDataModule` for the documents and their split (`source`, `val_fraction`,
    `test_fraction`, `split_seed`, `max_chars`), so a token baseline and a concept model trained on the
    same source see the same problems. Texts longer than the model's `arch.max_seq_len` tokens are cut by the
    model, which alone knows its tokenizer.
    """

    def __init__(self, source: CorpusSource, batch_size: int = 32, val_fraction: float = 0.1,
                 test_fraction: float = 0.1, split_seed: int = 0, max_chars: int = 256, num_workers: int = 0):
        super().__init__()
        check_split_args(val_fraction, test_fraction, max_chars)
        self.source = source
        self.batch_size = batch_size
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.max_chars = max_chars
        self.num_workers = num_workers
        self._docs: dict[str, list[Document]] | None = None

    def documents(self, split: str) -> list[Document]:
        if self._docs is None:
            self._docs, stats = load_documents(self.source, self.max_chars, self.val_fraction, self.test_fraction,
                                               self.split_seed)
            rank_zero_info(f"data: {self.source.describe()} -> " + " / ".join(
                f"{s} {len(self._docs[s])}" for s in SPLITS) + f" documents ({stats['blank']} blank and "
                f"{stats['duplicate']} duplicate skipped), rendered as text")
        return self._docs[split]

    def texts(self, split: str) -> list[str]:
        """Prompt and solution texts of a split: what the tokenizer is trained on (split "train")."""
        return [t for d in self.documents(split) for t in (render_prompt(d), render_solution(d))]

    def setup(self, stage: str | None = None) -> None:
        self.documents("train")
        if self.trainer is not None:  # the data side hands the model what it needs; the model never reads us
            self._handoff = TextData(self.source.describe(), lambda: self.texts("train"))  # the model keeps a weak ref
            hand_over(self.trainer.lightning_module, self._handoff)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        docs = self.documents(split)
        sets = [d.meta.get("problem_set", 0) for d in docs]  # fresh problems per epoch, as the concept models get
        return make_loader(docs, split, self.batch_size, shuffle, collate_texts, self.num_workers,
                           sets=sets if split == "train" and any(sets) else None)
