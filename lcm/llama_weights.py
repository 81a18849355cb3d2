"""A Llama's decoder layers copied into the concept trunk (`lcm.model.BaseLCM`): the same network, other ends.

The trunk is Llama's decoder stack -- pre-norm RMSNorm, causal attention with rotary positions, SwiGLU, a final
RMSNorm -- so a `LlamaModel`'s weights give it the same hidden states (`tests/test_token_model.py` checks it,
as litgpt checks its models against Hugging Face's). Names, per layer i (Hugging Face -> trunk):

    layers.i.input_layernorm.weight              -> blocks.i.norm1.weight
    layers.i.self_attn.{q,k,v}_proj.weight       -> blocks.i.attn.qkv.weight      [q; k; v] stacked, (3C, C)
    layers.i.self_attn.o_proj.weight             -> blocks.i.attn.proj.weight
    layers.i.post_attention_layernorm.weight     -> blocks.i.norm2.weight
    layers.i.mlp.{gate,up}_proj.weight           -> blocks.i.mlp.gate_up.weight   [gate; up] stacked, (2F, C)
    layers.i.mlp.down_proj.weight                -> blocks.i.mlp.down.weight
    norm.weight                                  -> norm.weight

Two layouts differ and are converted exactly:
- rotary pairs: Llama rotates dimension j of a head with j + hd/2 (`rotate_half`), the trunk rotates (2j, 2j+1).
  The rows of q and k in each head are permuted j -> 2j, j + hd/2 -> 2j + 1 (the inverse of the permutation
  Hugging Face's `convert_llama_weights_to_hf` applies to Meta's checkpoints): the trunk's rotated q and k are
  then Llama's, permuted alike, and every q.k is unchanged. v and the output projection are not rotated.
- grouped-query attention: each k / v head is repeated for its group of query heads (what Llama's `repeat_kv`
  does at run time), so the trunk stays plain multi-head attention.
The token embedding and the LM head are not copied: the trunk's ends are the concept projections.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lcm.errors import LCMError
from lcm.model import BaseLCM, LCMConfig


def _rope_theta(config) -> float:
    rope = getattr(config, "rope_parameters", None) or {}  # transformers >= 5 keeps it there
    return float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def _rope_type(config) -> str:
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return rope.get("rope_type", rope.get("type", "default"))


def trunk_arch(config, embed_dim: int, **overrides) -> LCMConfig:
    """The `LCMConfig` whose trunk has the shape of a `LlamaConfig` (`overrides`: e.g. max_seq_len, dropout)."""
    values = dict(embed_dim=embed_dim, d_model=config.hidden_size, n_layer=config.num_hidden_layers,
                  n_head=config.num_attention_heads, ffn_hidden=config.intermediate_size, positions="rope",
                  rope_base=_rope_theta(config), norm_eps=config.rms_norm_eps,
                  max_seq_len=min(config.max_position_embeddings, 128))
    return LCMConfig(**{**values, **overrides})


def check_compatible(arch: LCMConfig, config) -> None:
    """One error line naming every way the trunk `arch` and a Llama config differ (their weights would not fit
    or would compute something else)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    pairs = {"d_model / hidden_size": (arch.d_model, config.hidden_size),
             "n_layer / num_hidden_layers": (arch.n_layer, config.num_hidden_layers),
             "n_head / num_attention_heads": (arch.n_head, config.num_attention_heads),
             "d_model // n_head / head_dim": (arch.d_model // arch.n_head, head_dim),
             "ffn_dim / intermediate_size": (arch.ffn_dim, config.intermediate_size),
             "rope_base / rope_theta": (arch.rope_base, _rope_theta(config)),
             "norm_eps / rms_norm_eps": (arch.norm_eps, config.rms_norm_eps),
             "positions / rotary": (arch.positions, "rope"),
             "SwiGLU activation / hidden_act": ("silu", getattr(config, "hidden_act", "silu")),
             "rope scaling / rope_type": ("default", _rope_type(config)),
             "no biases / attention_bias, mlp_bias": ((False, False), (bool(getattr(config, "attention_bias", False)),
                                                                       bool(getattr(config, "mlp_bias", False))))}
    wrong = [f"{name} {ours} vs {theirs}" for name, (ours, theirs) in pairs.items() if ours != theirs]
    if wrong:
        raise LCMError(f"the concept trunk and the Llama differ (trunk vs Llama): {'; '.join(wrong)}")


def _rotary_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """(H * hd, C) rows of q or k in Llama's half-split rotary layout -> the trunk's interleaved pairs."""
    hd = w.shape[0] // n_head
    half = torch.arange(hd // 2)
    perm = torch.stack([half, half + hd // 2], dim=-1).flatten()  # [0, hd/2, 1, hd/2 + 1, ...]
    return w.view(n_head, hd, -1)[:, perm].reshape(n_head * hd, -1)


def _repeat_heads(w: torch.Tensor, n_kv: int, n_head: int) -> torch.Tensor:
    """(n_kv * hd, C) k or v rows -> (n_head * hd, C): each kv head repeated for its query group."""
    hd = w.shape[0] // n_kv
    return w.view(n_kv, 1, hd, -1).expand(n_kv, n_head // n_kv, hd, w.shape[1]).reshape(n_head * hd, -1)


def trunk_state(llama_state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """A `LlamaModel` / `LlamaForCausalLM` state dict -> the trunk's `blocks.*` and `norm.weight` tensors."""
    sd = {k.removeprefix("model."): v for k, v in llama_state.items()}
    H, n_kv = config.num_attention_heads, getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    out = {"norm.weight": sd["norm.weight"]}
    for i in range(config.num_hidden_layers):
        src, dst = f"layers.{i}.", f"blocks.{i}."
        q = _rotary_rows(sd[src + "self_attn.q_proj.weight"], H)
        k = _rotary_rows(_repeat_heads(sd[src + "self_attn.k_proj.weight"], n_kv, H), H)
        v = _repeat_heads(sd[src + "self_attn.v_proj.weight"], n_kv, H)
        out[dst + "attn.qkv.weight"] = torch.cat([q, k, v])
        out[dst + "attn.proj.weight"] = sd[src + "self_attn.o_proj.weight"]
        out[dst + "norm1.weight"] = sd[src + "input_layernorm.weight"]
        out[dst + "norm2.weight"] = sd[src + "post_attention_layernorm.weight"]
        out[dst + "mlp.gate_up.weight"] = torch.cat([sd[src + "mlp.gate_proj.weight"], sd[src + "mlp.up_proj.weight"]])
        out[dst + "mlp.down.weight"] = sd[src + "mlp.down_proj.weight"]
    return out


def copy_llama_into_trunk(trunk: BaseLCM, llama: nn.Module) -> BaseLCM:
    """A `LlamaModel` (or `LlamaForCausalLM`)'s decoder weights into `trunk`, in place; the trunk's input and
    output projections keep theirs. One error line when the shapes or settings differ."""
    check_compatible(trunk.cfg, llama.config)
    mapped = trunk_state(llama.state_dict(), llama.config)
    with torch.no_grad():
        own = trunk.state_dict()
        for name, tensor in mapped.items():
            own[name].copy_(tensor.to(own[name].dtype))
    return trunk


def init_trunk_from_llama(trunk: BaseLCM, name: str | Path) -> BaseLCM:
    """`copy_llama_into_trunk` from a local Hugging Face Llama folder (or a hub name when online): a concept
    trunk that starts from a pretrained LM's weights."""
    from transformers import AutoModelForCausalLM

    from lcm.pretrained import resolve

    folder = resolve(name)
    try:
        llama = AutoModelForCausalLM.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError) as e:
        raise LCMError(f"{name} is not a Hugging Face Llama folder ({type(e).__name__}: "
                       f"{(str(e).strip().splitlines() or [''])[0][:160]})") from e
    return copy_llama_into_trunk(trunk, llama)
