"""What a training run cost in FLOPs, the frozen encoder included: `training_cost.json` in every run folder.

Counted, not assumed: the callback adds up the real (non-padding) length of every training sequence the model
read, so equal optimizer steps with longer sequences (the token model reads ~450 tokens per forks problem, a
concept model ~50 concepts) show up as the cost they are.

The convention is the usual one (Kaplan et al. 2020, section 2.1; Chinchilla appendix F), written out:
- a matmul with a (n_in, n_out) weight costs 2 * n_in * n_out FLOPs per position: forward FLOPs per position are
  2 * (weights of every `nn.Linear` in the model), the output head included (tied or not); embeddings lookups
  and norms are free;
- causal self-attention over a sequence of length L costs 2 * L^2 * d per layer forward (QK^T and AV, each
  L^2 * d / 2 multiply-adds under the causal mask);
- training = 3x forward (the backward pass is two matmuls per forward one);
- the frozen sentence encoder (a concept system's front end) costs its forward pass on every unique sentence
  the run's embedding cache holds (train, validation and test: the system encodes them all once, the cache
  encodes nothing twice), with bidirectional attention (4 * L^2 * d per layer); it counts toward the run even
  when an earlier run filled the cache.
"""
from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import torch
from torch import nn

from lcm.io import write_json
from lcm.train.datamodule import ConceptDataModule

TRAIN_MULTIPLIER = 3  # forward + backward (2x forward)


def linear_weights(module: nn.Module) -> int:
    """Weights of every nn.Linear (tied ones counted where they are used: the head is a matmul like any other)."""
    return sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


def attention_layers(module: nn.Module) -> int:
    """Self-attention modules (class name ending in "Attention", wrappers of another one not counted twice)."""
    def is_attention(m: nn.Module) -> bool:
        return type(m).__name__.endswith("Attention")

    return sum(1 for m in module.modules()
               if is_attention(m) and not any(is_attention(c) for c in m.modules() if c is not m))


def forward_flops(weights: int, layers: int, width: int, positions: int, squared_lengths: int,
                  causal: bool = True) -> float:
    """Forward FLOPs of `positions` positions in sequences whose squared lengths sum to `squared_lengths`."""
    attention = (2 if causal else 4) * layers * width * squared_lengths
    return 2.0 * weights * positions + attention


def encoder_cost(encoder, texts: list[str]) -> dict:
    """FLOPs of one forward pass of a sentence-transformers encoder over `texts` (tokenized as it would be, cut
    at its max_seq_length). Encoders without a torch model (none ship) report None."""
    st = getattr(encoder, "st_model", None)
    if st is None or not texts:
        return {"encoder_flops": None, "encoder_sentences": len(texts)}
    cap = st.max_seq_length or 512
    lengths = [min(len(ids), cap) for ids in st.tokenizer(list(texts), add_special_tokens=True)["input_ids"]]
    width = int(encoder.dim)  # hidden size = embedding size for the mean-pooled transformers we ship
    weights = linear_weights(st)
    flops = forward_flops(weights, attention_layers(st), width, sum(lengths), sum(n * n for n in lengths), causal=False)
    return {"encoder_flops": flops, "encoder_sentences": len(texts), "encoder_tokens": sum(lengths),
            "encoder_linear_weights": weights}


class TrainingCost(L.Callback):
    """Counts the positions every training batch holds and writes `training_cost.json` (FLOPs of the trunk's
    training, of the encoder's passes, and their sum) into the run folder when `fit` ends. The counts travel in
    checkpoints, so a resumed run reports the whole run. Added to every `lcm fit` by the CLI; a model without
    `sequence_lengths(batch)` is not counted."""

    def __init__(self) -> None:
        self.positions = 0
        self.squared_lengths = 0
        self.sequences = 0
        self.seconds = 0.0  # wall time of training (validation included) before this process's fit started
        self._started: float | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        self._started = time.perf_counter()

    def fit_seconds(self) -> float:
        """Wall time of the whole fit (a resumed run's earlier segments included; data preparation before `fit`
        and the encoder filling its cache are not in it)."""
        return self.seconds + (time.perf_counter() - self._started if self._started is not None else 0.0)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        lengths_of = getattr(pl_module, "sequence_lengths", None)
        if lengths_of is None:
            return
        lengths = lengths_of(batch).to(torch.int64)  # (B,) real positions each sequence was trained on
        self.positions += int(lengths.sum())
        self.squared_lengths += int(lengths.pow(2).sum())
        self.sequences += int(lengths.numel())

    def state_dict(self) -> dict:
        return {"positions": self.positions, "squared_lengths": self.squared_lengths, "sequences": self.sequences,
                "seconds": self.fit_seconds()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.positions = int(state_dict.get("positions", 0))
        self.squared_lengths = int(state_dict.get("squared_lengths", 0))
        self.sequences = int(state_dict.get("sequences", 0))
        self.seconds = float(state_dict.get("seconds", 0.0))

    def on_fit_end(self, trainer: L.Trainer, pl_module) -> None:
        # no logger, no run folder (the trainer's log_dir would fall back to the working directory)
        if not trainer.loggers or not hasattr(pl_module, "sequence_lengths"):
            return
        # every rank counted its own shard: the sum over ranks (a collective, so every rank calls it). A resumed
        # multi-rank run restored rank 0's count on each rank: its pre-resume part is world size x rank 0's
        # count, which equal-sized DistributedSampler shards make right up to their sequence lengths.
        counts = trainer.strategy.reduce(torch.tensor([self.positions, self.squared_lengths, self.sequences],
                                                      dtype=torch.float64, device=pl_module.device), reduce_op="sum")
        self.positions, self.squared_lengths, self.sequences = (int(round(float(c))) for c in counts)
        if trainer.is_global_zero:
            folder = trainer.loggers[0].log_dir  # not trainer.log_dir: that one broadcasts (rank 0 alone is here)
            if folder is not None:  # fast_dev_run swaps in a DummyLogger: no run folder, nothing to write
                write_json(Path(folder) / "training_cost.json", self.report(trainer, pl_module))

    def report(self, trainer: L.Trainer, pl_module) -> dict:
        net = getattr(pl_module, "net", pl_module)
        weights, layers = linear_weights(net), attention_layers(net)
        trunk = TRAIN_MULTIPLIER * forward_flops(weights, layers, pl_module.arch.d_model, self.positions,
                                                 self.squared_lengths)
        out = {"optimizer_steps": int(trainer.global_step), "sequences": self.sequences, "positions": self.positions,
               "linear_weights": weights, "attention_layers": layers, "trunk_train_flops": trunk,
               "world_size": int(trainer.world_size), "fit_seconds": round(self.fit_seconds(), 1)}
        out.update(self.encoder_part(trainer))
        out["total_flops"] = trunk + (out.get("encoder_flops") or 0.0)
        return out

    @staticmethod
    def encoder_part(trainer: L.Trainer) -> dict:
        """The frozen encoder's passes over the corpus's unique sentences (concept and sentence data)."""
        data = trainer.datamodule
        if not isinstance(data, ConceptDataModule):  # text data (the token baseline): no encoder
            return {}
        corpus = data.corpus
        n = int(corpus.stats.get("sentences", len(corpus.texts)))
        return encoder_cost(data.encoder, [corpus.texts[i] for i in range(n)])
