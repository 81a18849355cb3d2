"""LightningModule for Base-LCM: MSE next-concept regression in robust-normalized space."""
from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from lcm.concepts import TARGET_TYPES, ConceptType
from lcm.errors import LCMError
from lcm.eval.metrics import next_step_scores, retrieval_hits
from lcm.model import BaseLCM, LCMConfig
from lcm.normalizer import RobustScaler


def target_mask(types: torch.Tensor) -> torch.Tensor:
    """types (B, T) -> (B, T-1) bool: positions whose *next* concept is a loss target (step / end-of-text)."""
    nxt = types[:, 1:]
    mask = torch.zeros_like(nxt, dtype=torch.bool)
    for t in TARGET_TYPES:
        mask |= nxt == int(t)
    return mask


class ConceptLM(L.LightningModule):
    """Base-LCM trainer.

    Args:
        arch: transformer shape; `arch.embed_dim` must equal the encoder's dimension.
        lr: peak AdamW learning rate.
        weight_decay: AdamW decay on matrices (not on norms and biases).
        betas: AdamW betas.
        warmup_steps: linear warmup, then cosine decay to `lr * min_lr_ratio` at the last step.
        min_lr_ratio: final learning rate as a share of `lr`.
    """

    def __init__(self, arch: LCMConfig = LCMConfig(), lr: float = 1e-3, weight_decay: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 100, min_lr_ratio: float = 0.1):
        super().__init__()
        if isinstance(arch, dict):  # from a checkpoint's hyperparameters
            arch = LCMConfig(**arch)
        self.save_hyperparameters({"arch": asdict(arch), "lr": lr, "weight_decay": weight_decay, "betas": tuple(betas),
                                   "warmup_steps": warmup_steps, "min_lr_ratio": min_lr_ratio})
        self.arch = arch
        self.net = BaseLCM(arch)
        self.normalizer = RobustScaler(arch.embed_dim)
        self.register_buffer("mean_target", torch.zeros(arch.embed_dim))  # mean-embedding baseline
        self.register_buffer("eot_embedding", torch.zeros(arch.embed_dim))
        self.meta: dict = {}  # encoder config / id and end-of-text text: what generation needs to rebuild inputs
        self._val_index = None

    # ---- wiring to the data ----------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is None or not hasattr(dm, "corpus"):
            return
        if dm.embed_dim != self.arch.embed_dim:
            raise LCMError(f"encoder {dm.encoder.id} has dimension {dm.embed_dim} but model.arch.embed_dim is "
                           f"{self.arch.embed_dim}; set model.arch.embed_dim: {dm.embed_dim}")
        if not bool(self.normalizer.fitted):  # a checkpoint, when resumed, overwrites these afterwards
            targets = torch.from_numpy(dm.train_targets())
            self.normalizer.fit(targets)
            self.mean_target.copy_(targets.mean(0))
            self.eot_embedding.copy_(torch.from_numpy(dm.corpus.table[dm.corpus.eot_id]))
            self.meta = {"encoder": dm.encoder.config(), "encoder_id": dm.encoder.id, "dim": dm.embed_dim,
                         "eot_text": dm.eot_text, "max_chars": dm.max_chars}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["lcm"] = dict(self.meta)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        meta = checkpoint.get("lcm") or {}
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is not None and hasattr(dm, "encoder") and meta.get("encoder_id") not in (None, dm.encoder.id):
            raise LCMError(f"checkpoint was trained with encoder {meta['encoder_id']!r} (dim {meta.get('dim')}), "
                           f"the data config uses {dm.encoder.id!r} (dim {dm.embed_dim})")
        self.meta = dict(meta)

    def on_fit_start(self) -> None:
        self._write_bank()

    def on_validation_start(self) -> None:
        if not self.trainer.sanity_checking and self.trainer.state.fn == "validate":
            self._write_bank()

    def _write_bank(self) -> None:
        """Persist the generation sentence bank next to the checkpoints (rank zero)."""
        dm, ckpt = self.trainer.datamodule, self.trainer.checkpoint_callback
        if not self.trainer.is_global_zero or not hasattr(dm, "bank") or ckpt is None or ckpt.dirpath is None:
            return
        from lcm.retrieval import SentenceBank

        folder = Path(ckpt.dirpath) / "bank"
        try:
            SentenceBank.load(folder, encoder_id=dm.encoder.id, dim=dm.embed_dim)
            return  # a valid bank is already there
        except LCMError:
            pass
        dm.bank().save(folder)

    # ---- steps -----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw concepts (B, T, D) -> raw next-concept predictions (B, T, D)."""
        return self.normalizer.denormalize(self.net(self.normalizer.normalize(x)))

    def _predict(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xn = self.normalizer.normalize(batch["x"])  # (B, T, D)
        pred = self.net(xn[:, :-1])  # (B, T-1, D) prediction of concept t+1 from concepts <= t
        return pred, xn[:, 1:], target_mask(batch["types"])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        pred, target, mask = self._predict(batch)
        loss = F.mse_loss(pred[mask].float(), target[mask].float())
        self.log("train/loss", loss, prog_bar=True, batch_size=int(mask.shape[0]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        pred, _, mask = self._predict(batch)
        pred = self.normalizer.denormalize(pred.float())
        gold = batch["x"][:, 1:]
        return {"pred": pred, "mask": mask, "cosine": F.cosine_similarity(pred, gold, dim=-1)}

    @torch.no_grad()
    def _evaluate(self, batch: dict, split: str) -> None:
        pred, target, mask = self._predict(batch)
        n = int(mask.sum())
        if n == 0:
            return
        pred, target = pred[mask].float(), target[mask].float()  # (N, D) normalized
        gold = batch["x"][:, 1:][mask].float()  # (N, D) raw
        prev = batch["x"][:, :-1][mask].float()
        pred_raw = self.normalizer.denormalize(pred)
        scores = next_step_scores(pred_raw, gold, prev, self.mean_target)  # each (N,)
        index = self._retrieval_index(split)
        if index is not None:
            hit = retrieval_hits(*index, pred_raw.cpu().numpy(), batch["ids"][:, 1:][mask].cpu().numpy())
            scores["retrieval_acc"] = torch.from_numpy(hit).to(pred.device).float()
        gold_types = batch["types"][:, 1:][mask]
        is_eot = gold_types == int(ConceptType.EOT)
        n_eot, n_step = int(is_eot.sum()), int((~is_eot).sum())
        # (value, number of positions it averages): epoch means are weighted by position, not by batch
        metrics = {"loss": (F.mse_loss(pred, target), n)} | {k: (v.mean(), n) for k, v in scores.items()}
        # the end-of-text concept is easy to predict; step-only scores are the harder, honest number
        if n_step:
            metrics |= {f"step_{k}": (v[~is_eot].mean(), n_step) for k, v in scores.items()}
        if n_eot:
            eot_cos = F.cosine_similarity(pred_raw, self.eot_embedding.expand_as(pred_raw), dim=-1)
            metrics["eot_cosine"] = (eot_cos[is_eot].mean(), n_eot)
        for k, (v, count) in metrics.items():
            self.log(f"{split}/{k}", v, batch_size=count, on_epoch=True, sync_dist=True,
                     prog_bar=k in ("loss", "step_cosine"))

    def _retrieval_index(self, split: str):
        """Flat IP index over every target sentence of train + `split`; rebuilt per run, cached per split."""
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is None or not hasattr(dm, "retrieval_candidates"):
            return None
        if self._val_index is None or self._val_index[0] != split:
            import faiss

            from lcm.retrieval import unit_rows

            rows = dm.retrieval_candidates(split)
            index = faiss.IndexFlatIP(self.arch.embed_dim)
            index.add(unit_rows(dm.corpus.table[rows]))
            self._val_index = (split, (index, rows))
        return self._val_index[1]

    # ---- optimisation ----------------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        decay = [p for p in self.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.ndim < 2]
        groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        fused = self.device.type == "cuda" or (self._trainer is not None and self.trainer.strategy.root_device.type == "cuda")
        opt = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas), fused=fused or None)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(hp.warmup_steps, total // 2)

        def lr_lambda(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return hp.min_lr_ratio + (1 - hp.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
