"""LightningModule for Base-LCM: MSE next-concept regression in robust-normalized space."""
from __future__ import annotations

from dataclasses import asdict
from typing import NamedTuple

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from lcm.compile import CompileOnFit
from lcm.concepts import PAD, TARGET_TYPES, TYPE_NAMES, ConceptType, layout_mismatch
from lcm.contrastive import Contrastive, candidates, info_nce
from lcm.errors import LCMError
from lcm.handoff import ConceptData, DataConsumer, check_embed_dim, expect
from lcm.metrics import context_scores, next_step_scores, retrieval_hits
from lcm.model import BaseLCM, LCMConfig
from lcm.normalizer import RobustScaler
from lcm.optim import OptimConfig, adamw_warmup_cosine
from lcm.plan_vectors import planner_name
from lcm.retrieval import unit_rows
from lcm.sampling import BaseLCMSampling, randn_like
from lcm.step_policy import fit_temperature, step_nll_entropy


class Candidates(NamedTuple):
    """The retrieval candidates of a split, as validation searches them."""

    index: object  # faiss IndexFlatIP over their unit vectors
    rows: np.ndarray  # (N,) their table rows, sorted
    vectors: np.ndarray  # (N, D) raw
    boundary: np.ndarray  # (N,) bool: the end-of-text or break sentence (never a step's read-out)


CONTEXT_SWAP_BATCHES = 2  # validation / test batches per epoch that also score the context swap (ctx_shift, ctx_gain)


def target_mask(types: torch.Tensor, doc: torch.Tensor | None = None) -> torch.Tensor:
    """types (B, T) -> (B, T-1) bool: positions whose *next* concept is a loss target (step / end-of-text).
    With packed documents (`doc` (B, T)), a concept is never a target of the previous document's last one."""
    nxt = types[:, 1:]
    mask = torch.zeros_like(nxt, dtype=torch.bool)
    for t in TARGET_TYPES:
        mask |= nxt == int(t)
    if doc is not None:
        mask &= doc[:, 1:] == doc[:, :-1]
    return mask


def packed(batch: dict) -> dict:
    """doc / pos (B, T-1) of the input positions of a packed batch; nothing for an unpacked one."""
    return {"doc": batch["doc"][:, :-1], "pos": batch["pos"][:, :-1]} if "doc" in batch else {}


class ConceptLM(CompileOnFit, DataConsumer, L.LightningModule):
    """Base-LCM trainer.

    Args:
        arch: transformer shape; `arch.embed_dim` must equal the encoder's dimension.
        optim: AdamW with linear warmup and cosine decay (`lcm.optim.OptimConfig`), shared by every model.
        loss_weights: weight of each target type in the MSE, by name: step, eot, plan, break (default 1).
        boundary_threshold: validation's boundary metrics classify each prediction as generation does (the
            largest cosine: end-of-text, break or the best other candidate); a number is also a floor on the
            boundary cosines, as generation's `eot_threshold` (None, default: no floor).
        init_from: a local Hugging Face Llama folder (or a hub name when online) whose decoder layers start the
            trunk (`lcm.llama_weights`: the trunk is Llama's decoder stack; `arch` must have its shape, e.g. from
            `lcm.llama_weights.trunk_arch`). Applied when a fresh model is attached to its data (never over a
            resumed checkpoint's weights); the input and output projections start at random.
        contrastive: an InfoNCE term beside (or instead of) the MSE (`lcm.contrastive.Contrastive`); None = MSE
            only. Validation loss (and so `best.ckpt`) is the same objective.
        compile: `torch.compile` the network when `fit` starts (in place, `nn.Module.compile`: parameter names
            and checkpoints stay the same). Validation inside `fit` runs compiled too; `lcm validate` / `test`
            and models loaded for generation stay eager. Worth it on GPUs for long runs; the first steps
            (and each new batch shape, until shapes are marked dynamic) pay the compile time.
    """

    sampling_settings = BaseLCMSampling  # per-call options of generation: noise
    has_step_policy = True  # one deterministic prediction per step: a categorical policy over a bank (lcm.step_policy)
    STEP_POLICY_FIT_MAX = 1024  # held-out predictions that fit tau (seeded sample): bounds the epoch-end cost
    STEP_POLICY_EVAL_MAX = 4096  # ... and that its NLL and entropy are averaged over (the same seeded order)

    def __init__(self, arch: LCMConfig = LCMConfig(), optim: OptimConfig = OptimConfig(),
                 loss_weights: dict[str, float] | None = None, boundary_threshold: float | None = None, compile: bool = False,
                 contrastive: Contrastive | None = None, init_from: str | None = None):
        super().__init__()
        if isinstance(arch, dict):  # from a checkpoint's hyperparameters
            arch = LCMConfig(**arch)
        self.optim = OptimConfig.of(optim)
        self.contrastive = Contrastive.of(contrastive)
        self.save_hyperparameters({"arch": asdict(arch), "optim": self.optim.hparams(),
                                   "loss_weights": dict(loss_weights or {}), "boundary_threshold": boundary_threshold,
                                   "compile": bool(compile), **self.extra_hparams(),
                                   # absent = MSE only: an MSE model's checkpoint keeps the hparams it always had
                                   **({"contrastive": self.contrastive.hparams()} if self.contrastive else {}),
                                   **({"init_from": init_from} if init_from else {})})
        self.init_from = init_from
        unknown = set(loss_weights or {}) - {TYPE_NAMES[t] for t in TARGET_TYPES}
        if unknown:
            raise LCMError(f"loss_weights has unknown position types {sorted(unknown)}; use step, eot, plan, break")
        weights = torch.zeros(len(ConceptType))  # indexed by ConceptType; prompt positions weigh 0
        for t in TARGET_TYPES:
            weights[int(t)] = float((loss_weights or {}).get(TYPE_NAMES[t], 1.0))
        self.register_buffer("type_weights", weights, persistent=False)
        self.arch = arch
        self.net = self.build_net(arch)
        self.normalizer = RobustScaler(arch.embed_dim)
        self.register_buffer("mean_target", torch.zeros(arch.embed_dim))  # mean-embedding baseline
        self.register_buffer("eot_embedding", torch.zeros(arch.embed_dim))
        self.register_buffer("break_embedding", torch.zeros(arch.embed_dim))  # planning only
        # temperature of the step policy, fitted on the last validation (NaN until then); read by generation.
        # Kept in the checkpoint's "lcm" record, not its weights: checkpoints without it still load.
        self.register_buffer("step_tau", torch.tensor(float("nan")), persistent=False)
        self.meta: dict = {}  # encoder config / id and end-of-text text: what generation needs to rebuild inputs
        self._val_index = None
        self._negatives: tuple[torch.Tensor, torch.Tensor] | None = None  # contrastive bank: rows (K,), raw (K, D)
        self._held_out: dict[str, list] = {}  # split -> [(pred (N, D) raw, gold rows (N,))] for the step policy

    def build_net(self, arch: LCMConfig) -> torch.nn.Module:
        """The network: (B, T, D) normalized concepts -> next-concept predictions. Subclasses swap it."""
        return BaseLCM(arch)

    def extra_hparams(self) -> dict:
        """Subclass arguments to store in checkpoints next to the shared ones."""
        return {}

    # ---- wiring to the data ----------------------------------------------------------------------
    def attach_data(self, data: ConceptData) -> None:
        """Take what fitting needs from the data side (`ConceptDataModule.setup` hands it over). A fresh model
        fits its normalizer here; a resumed checkpoint overwrites these buffers afterwards."""
        expect(data, ConceptData, type(self).__name__, "lcm.train.ConceptDataModule")
        check_embed_dim(data.encoder, self.arch.embed_dim)
        self.keep_data(data)
        self._val_index = None  # retrieval candidates come from this data
        if self.contrastive is not None and self.contrastive.bank_negatives:
            rows, vectors = data.retrieval_candidates("train")
            self._negatives = (torch.from_numpy(rows).long(), torch.from_numpy(vectors).float())
        if bool(self.normalizer.fitted):
            return
        if self.init_from:  # a fresh model: its trunk starts from a pretrained Llama's decoder layers
            from lcm.llama_weights import init_trunk_from_llama

            if not isinstance(self.net, BaseLCM):
                raise LCMError(f"init_from starts a Base-LCM trunk; {type(self).__name__} has no such trunk")
            init_trunk_from_llama(self.net, self.init_from)
        targets = torch.from_numpy(data.fit_targets())
        self.normalizer.fit(targets)
        self.mean_target.copy_(targets.mean(0))
        self.eot_embedding.copy_(torch.from_numpy(data.eot_vector))
        if data.planning:
            self.break_embedding.copy_(torch.from_numpy(data.break_vector))
        self.meta = data.meta()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # the class travels with the checkpoint: generation rebuilds Base-LCM or a diffusion LCM alike
        checkpoint["lcm"] = dict(self.meta, model_class=f"{type(self).__module__}.{type(self).__qualname__}")
        if torch.isfinite(self.step_tau):
            checkpoint["lcm"]["step_tau"] = float(self.step_tau)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        meta = checkpoint.get("lcm") or {}
        data = self.data
        if data is not None:
            if meta.get("encoder_id") not in (None, data.encoder.id):
                raise LCMError(f"checkpoint was trained with encoder {meta['encoder_id']!r} (dim {meta.get('dim')}), "
                               f"the data config uses {data.encoder.id!r} (dim {data.encoder.dim})")
            diff = layout_mismatch(meta, data.planning, data.eot_text, data.break_text, "checkpoint")
            if meta.get("planner") and data.planner and planner_name(meta["planner"]) != planner_name(data.planner):
                diff += f"{'; ' if diff else ''}planner: checkpoint {meta['planner']!r} vs config {data.planner!r}"
            if diff:
                raise LCMError(f"checkpoint and data config disagree ({diff}); use the config it was trained with")
        self.meta = dict(meta)
        if meta.get("step_tau") is not None:
            self.step_tau.fill_(float(meta["step_tau"]))

    # ---- steps -----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw concepts (B, T, D) -> raw next-concept predictions (B, T, D)."""
        return self.normalizer.denormalize(self.net(self.normalizer.normalize(x)))

    def hidden_states(self, x: torch.Tensor) -> torch.Tensor:
        """Raw concepts (B, T, D) -> final-layer hidden states of the causal transformer over them (B, T, d)."""
        return self.net.hidden_states(self.normalizer.normalize(x))

    def denoiser_evals(self, noise: float = 0.0) -> int:
        """Denoiser forward passes per predicted concept (none: Base-LCM predicts in one pass, noise or not)."""
        return 0

    def next_concept(self, x: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator | None = None, *,
                     plan_rows: torch.Tensor | None = None, noise: float = 0.0) -> torch.Tensor:
        """Prediction after each sequence's last concept: x (A, T, D) raw, right-padded; lengths (A,) -> (A, D) raw.

        Base-LCM is deterministic; `noise` > 0 samples from it by adding N(0, noise^2) to the prediction in
        normalized space (each dimension in units of its robust scale). Options: `BaseLCMSampling`. `plan_rows`
        (which rows start a paragraph) is unused: Base-LCM predicts plans as it predicts steps."""
        pred = self.net(self.normalizer.normalize(x))  # (A, T, D) normalized
        pred = pred[torch.arange(len(x), device=x.device), lengths.to(x.device) - 1].float()  # (A, D)
        if noise > 0:
            pred = pred + noise * randn_like(pred, generator)
        return self.normalizer.denormalize(pred)

    def _predict(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xn = self.normalizer.normalize(batch["x"])  # (B, T, D)
        pred = self.net(xn[:, :-1], **packed(batch))  # (B, T-1, D) prediction of concept t+1 from concepts <= t
        return pred, xn[:, 1:], target_mask(batch["types"], batch.get("doc"))

    def _loss(self, pred: torch.Tensor, target: torch.Tensor, types: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Position-type-weighted MSE. pred/target (B, T-1, D) normalized; types (B, T); mask (B, T-1) from
        `target_mask` (0 on prompt, padding and, packed, across a document boundary)."""
        w = self.type_weights[types[:, 1:].clamp_min(0)] * mask  # (B, T-1)
        per_pos = (pred.float() - target.float()).pow(2).mean(-1)  # (B, T-1)
        return (per_pos * w).sum() / w.sum().clamp_min(1e-8)

    def _objective(self, pred: torch.Tensor, target: torch.Tensor, batch: dict, mask: torch.Tensor,
                   negatives: bool = True) -> tuple[torch.Tensor, dict]:
        """The training objective: the MSE (`_loss`), or with `contrastive` its weighted sum with InfoNCE over the
        batch's unique target sentences (+ bank negatives when `negatives`). Returns (loss, its parts)."""
        mse = self._loss(pred, target, batch["types"], mask)
        c = self.contrastive
        if c is None:
            return mse, {}
        w = self.type_weights[batch["types"][:, 1:].clamp_min(0)][mask]  # (N,)
        gold_ids, gold_vecs = batch["ids"][:, 1:][mask], batch["x"][:, 1:][mask].float()  # (N,), (N, D) raw
        bank_ids = bank_vecs = None
        if negatives and self._negatives is not None:
            pick = torch.randint(len(self._negatives[0]), (c.bank_negatives,))
            bank_ids, bank_vecs = (t[pick].to(gold_vecs.device) for t in self._negatives)
        cand, gold = candidates(gold_ids, gold_vecs, bank_ids, bank_vecs)
        nce = info_nce(self.normalizer.denormalize(pred[mask].float()), cand, gold, c.temperature, w)
        return c.mse_weight * mse + c.weight * nce, {"mse": mse, "infonce": nce}

    @staticmethod
    def sequence_lengths(batch: dict) -> torch.Tensor:
        """(B,) concepts each sequence of the batch feeds the model to predict its next one: its real length - 1
        (padding excluded; what a training step costs, `lcm.train.cost`)."""
        return ((batch["types"] != PAD).sum(1) - 1).clamp_min(0)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        pred, target, mask = self._predict(batch)
        loss, parts = self._objective(pred, target, batch, mask)
        self.log("train/loss", loss, prog_bar=True, batch_size=int(mask.shape[0]))
        for k, v in parts.items():
            self.log(f"train/{k}", v, batch_size=int(mask.shape[0]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val", context_swap=batch_idx < CONTEXT_SWAP_BATCHES)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test", context_swap=batch_idx < CONTEXT_SWAP_BATCHES)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Teacher-forced next-concept predictions at every target position of the batch, flattened (N = targets):
        pred (N, D) raw, gold_row (N,) table row of the gold concept, type (N,) its position type, cosine (N,)
        to the gold concept. `lcm predict` writes them (`lcm.train.callbacks.PredictionWriter`)."""
        pred, _, mask = self._predict(batch)
        pred = self.normalizer.denormalize(pred.float())[mask]  # (N, D)
        gold = batch["x"][:, 1:][mask].float()
        return {"pred": pred, "gold_row": batch["ids"][:, 1:][mask], "type": batch["types"][:, 1:][mask],
                "cosine": F.cosine_similarity(pred, gold, dim=-1)}

    @torch.no_grad()
    def _evaluate(self, batch: dict, split: str, context_swap: bool = True) -> None:
        pred_all, target_all, mask = self._predict(batch)
        n = int(mask.sum())
        if n == 0:
            return
        loss, parts = self._objective(pred_all, target_all, batch, mask, negatives=False)  # in-batch: reproducible
        pred = pred_all[mask].float()  # (N, D) normalized
        gold = batch["x"][:, 1:][mask].float()  # (N, D) raw
        prev = batch["x"][:, :-1][mask].float()
        pred_raw = self.normalizer.denormalize(pred)
        scores = next_step_scores(pred_raw, gold, prev, self.mean_target)  # each (N,)
        index = self._retrieval_index(split)
        found = None  # (scores, ids) (N, 3): the top-1 for retrieval accuracy, the best non-boundary for boundaries
        if index is not None:
            found = index.index.search(unit_rows(pred_raw.cpu().numpy()), 3)  # at most 2 are boundary sentences
            hit = retrieval_hits(index.index, index.rows, None, batch["ids"][:, 1:][mask].cpu().numpy(), top=found[1])
            scores["retrieval_acc"] = torch.from_numpy(hit).to(pred.device).float()
            if self.has_step_policy:
                self._held_out.setdefault(split, []).append((pred_raw.cpu(), batch["ids"][:, 1:][mask].cpu()))
        gold_types = batch["types"][:, 1:][mask]
        # (value, number of positions it averages): epoch means are weighted by position, not by batch
        metrics = {"loss": (loss, n)} | {k: (v, n) for k, v in parts.items()}
        metrics |= {k: (v.mean(), n) for k, v in scores.items()}
        for t in TARGET_TYPES:  # per position type: step scores are the hard, honest number
            sel = gold_types == int(t)
            if sel.any():
                metrics |= {f"{TYPE_NAMES[t]}_{k}": (v[sel].mean(), int(sel.sum())) for k, v in scores.items()
                            if t == ConceptType.STEP or not k.startswith("cosine_")}
        metrics |= self._boundary_metrics(pred_raw, gold_types, self._best_step_cos(pred_raw, index, found))
        if context_swap:  # a second prediction of the batch: a diffusion model samples it again (~80 denoiser passes)
            metrics |= self._context_metrics(batch, pred_all, mask)
        for k, (v, count) in metrics.items():
            self.log(f"{split}/{k}", v, batch_size=count, on_epoch=True, sync_dist=True,
                     prog_bar=k in ("loss", "step_cosine"))

    def _context_metrics(self, batch: dict, pred_all: torch.Tensor, mask: torch.Tensor) -> dict:
        """`ctx_shift` / `ctx_gain` (`lcm.metrics.context_scores`): every sequence of the batch predicted again from
        the previous sequence's concepts (the batch rolled by one; a diffusion model samples with the same seeded noise,
        so only the context differs), compared at the positions that are targets in both. pred_all (B, T-1, D)
        normalized, mask (B, T-1). Empty for a batch of one sequence."""
        if batch["x"].shape[0] < 2:
            return {}
        swapped = {k: batch[k].roll(1, 0) for k in ("x", "types", "doc", "pos") if k in batch}
        pred_swapped, _, mask_swapped = self._predict(swapped)
        both = mask & mask_swapped
        n = int(both.sum())
        if n == 0:
            return {}
        raw = self.normalizer.denormalize
        scores = context_scores(raw(pred_all[both].float()), raw(pred_swapped[both].float()),
                                batch["x"][:, 1:][both].float())
        return {k: (v.mean(), n) for k, v in scores.items()}

    def _boundary_metrics(self, pred_raw: torch.Tensor, gold_types: torch.Tensor, step_cos: torch.Tensor) -> dict:
        """Would generation end the paragraph / the text here? Each prediction is classified as generation does
        (`lcm.generation_step.StepRule`): end-of-text, break (planning) or continue by the largest of its cosines
        to the end-of-text concept, the break concept and the best retrieval candidate that is neither (without
        data: the best is taken as 0); `boundary_threshold`, if set, is a floor on the boundary cosines.
        `step_cos` (N,): `_best_step_cos`. Compared with the gold type; at a paragraph start (gold: a plan) a break
        counts as the plan, as generation reads it."""
        eot_cos = F.cosine_similarity(pred_raw, self.eot_embedding.expand_as(pred_raw), dim=-1)  # (N,)
        brk_cos = F.cosine_similarity(pred_raw, self.break_embedding.expand_as(pred_raw), dim=-1)
        if not bool(self.meta.get("planning")):
            brk_cos = torch.full_like(brk_cos, -2.0)  # no break without planning
        floor = self.hparams.boundary_threshold
        if floor is not None:
            eot_cos = torch.where(eot_cos >= floor, eot_cos, torch.full_like(eot_cos, -2.0))
            brk_cos = torch.where(brk_cos >= floor, brk_cos, torch.full_like(brk_cos, -2.0))
        eot = (eot_cos > step_cos) & (eot_cos >= brk_cos)
        # a break predicted at a paragraph start (where training puts a plan: the gold is a plan) is read as the
        # plan by generation (`StepRule.classify`): it continues, as a plan would
        brk = (brk_cos > step_cos) & (brk_cos > eot_cos) & (gold_types != int(ConceptType.PLAN))
        is_eot, is_brk = gold_types == int(ConceptType.EOT), gold_types == int(ConceptType.BREAK)
        correct = (eot == is_eot) & (brk == is_brk)
        out = {"boundary_acc": (correct.float().mean(), int(correct.numel()))}
        for name, gold, hit in (("eot", is_eot, eot), ("break", is_brk, brk)):
            if gold.any():
                out[f"{name}_recall"] = (hit[gold].float().mean(), int(gold.sum()))
        return out

    @staticmethod
    def _best_step_cos(pred_raw: torch.Tensor, index: "Candidates | None", found) -> torch.Tensor:
        """(N,) cosine of each prediction's best retrieval candidate that is not the end-of-text or break
        sentence, from the (scores, ids) top-3 search of `index` (zeros without data)."""
        if index is None:
            return torch.zeros(len(pred_raw), device=pred_raw.device)
        scores, top = found
        scores = np.where(index.boundary[top], -2.0, scores).max(1)
        return torch.from_numpy(scores).to(pred_raw.device, torch.float32)

    def _retrieval_index(self, split: str) -> "Candidates | None":
        """Flat IP index over the data's retrieval candidates for `split` (every target sentence of `split`,
        training targets up to `data.val_retrieval_max`); rebuilt per run, cached per split."""
        if self.data is None:
            return None
        if self._val_index is None or self._val_index[0] != split:
            import faiss

            rows, vectors = self.data.retrieval_candidates(split)
            index = faiss.IndexFlatIP(self.arch.embed_dim)
            unit = unit_rows(vectors)
            index.add(unit)
            boundary = np.zeros(len(rows), dtype=bool)  # candidates that are the end-of-text or break sentence
            for vec in (self.eot_embedding, self.break_embedding):
                if bool(vec.any()):
                    boundary |= unit @ unit_rows(vec.cpu().numpy()[None])[0] > 1 - 1e-4
            self._val_index = (split, Candidates(index, rows, vectors, boundary))
        return self._val_index[1]

    def on_validation_epoch_end(self) -> None:
        self._log_step_policy("val", fit=True)

    def on_test_epoch_end(self) -> None:
        self._log_step_policy("test", fit=False)

    def _log_step_policy(self, split: str, fit: bool) -> None:
        """The step policy on the held-out predictions of the epoch: softmax(cos(pred, z) / tau) over the
        retrieval candidates. Validation fits tau by NLL (on a seeded sample of at most STEP_POLICY_FIT_MAX
        predictions) and keeps it in `step_tau`; test reuses it. Logs tau, the gold NLL and the mean entropy
        (nats per step) over at most STEP_POLICY_EVAL_MAX predictions (a superset of the fitting sample)."""
        held = self._held_out.pop(split, [])
        index = self._retrieval_index(split) if held else None
        if index is None:
            return
        pred = torch.cat([h[0] for h in held])  # (N, D) raw
        gold = torch.from_numpy(np.searchsorted(index.rows, torch.cat([h[1] for h in held]).numpy()))  # (N,)
        cand = torch.from_numpy(index.vectors).float()
        order = torch.randperm(len(pred), generator=torch.Generator().manual_seed(0))
        if fit or not torch.isfinite(self.step_tau):
            pick = order[: self.STEP_POLICY_FIT_MAX]
            self.step_tau.fill_(fit_temperature(pred[pick], cand, gold[pick]))
        tau = float(self.step_tau)
        pick = order[: self.STEP_POLICY_EVAL_MAX]
        nll, entropy = step_nll_entropy(pred[pick], cand, gold[pick], tau)
        for name, value in (("step_tau", tau), ("step_nll", nll), ("step_entropy", entropy)):
            self.log(f"{split}/{name}", value, sync_dist=True)

    # ---- optimisation ----------------------------------------------------------------------------
    def configure_optimizers(self):
        return adamw_warmup_cosine(self, self.optim)
