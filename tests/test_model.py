import pytest
import torch

from lcm.model import BaseLCM, ConceptStepper, LCMConfig
from lcm.normalizer import RobustScaler


@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_shapes_and_causality(positions):
    torch.manual_seed(0)
    cfg = LCMConfig(embed_dim=12, d_model=16, n_layer=2, n_head=2, max_seq_len=10, positions=positions, dropout=0.0)
    net = BaseLCM(cfg).eval()
    x = torch.randn(3, 7, 12)
    y = net(x)
    assert y.shape == (3, 7, 12)
    x2 = x.clone()
    x2[:, 4:] = torch.randn(3, 3, 12)  # change the future
    y2 = net(x2)
    assert torch.allclose(y[:, :4], y2[:, :4], atol=1e-6)  # the past does not see it
    assert not torch.allclose(y[:, 4:], y2[:, 4:])


def test_rejects_too_long_sequences():
    net = BaseLCM(LCMConfig(embed_dim=8, d_model=16, n_layer=1, n_head=2, max_seq_len=4))
    with pytest.raises(ValueError, match="max_seq_len"):
        net(torch.randn(1, 5, 8))


def test_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        LCMConfig(d_model=30, n_head=4)
    assert LCMConfig(d_model=256).ffn_dim == 704  # 8/3 * 256 rounded up to 64


def test_robust_scaler_keeps_mostly_constant_dimensions_finite():
    """A dimension that is 0 for most rows (a slot past most sentences' ends) has IQR 0: it is scaled by its
    standard deviation instead of eps, and no scale falls below 1% of the median, so normalized values stay O(1-10)
    instead of ~1e6 (the MSE of a Base-LCM in the slots space was 5e8 before)."""
    torch.manual_seed(0)
    x = torch.randn(1000, 4)
    x[:, 2] = 0.0
    x[:50, 2] = 0.5  # non-zero in 5% of the rows
    x[:, 3] = 1e-9 * torch.randn(1000)  # (almost) constant
    sc = RobustScaler(4).fit(x)
    assert torch.allclose(sc.scale[2], x[:, 2].std(), rtol=1e-5)
    assert float(sc.scale[3]) >= 0.01 * float(sc.scale[:2].median()) - 1e-9
    assert float(sc.normalize(x).abs().max()) < 20
    assert torch.allclose(sc.denormalize(sc.normalize(x)), x, atol=1e-5)


def test_robust_scaler_matches_definition_and_round_trips():
    torch.manual_seed(0)
    x = torch.randn(2000, 5) * torch.tensor([1.0, 2.0, 0.5, 3.0, 1.0]) + 4.0
    sc = RobustScaler(5).fit(x)
    q = torch.quantile(x, torch.tensor([0.25, 0.5, 0.75]), dim=0)
    assert torch.allclose(sc.center, q[1], atol=1e-5)
    assert torch.allclose(sc.scale, (q[2] - q[0]) / 1.349, atol=1e-5)
    assert torch.allclose(sc.denormalize(sc.normalize(x)), x, atol=1e-5)
    z = sc.normalize(x)
    assert torch.allclose(z.std(0), torch.ones(5), atol=0.1)  # Gaussian data -> unit std
    state = sc.state_dict()
    sc2 = RobustScaler(5)
    sc2.load_state_dict(state)
    assert bool(sc2.fitted) and torch.equal(sc2.scale, sc.scale)


def _tiny(kind: str, **kw):
    from lcm.decoder import MIN_VOCAB
    from lcm.diffusion import DiffusionLCM
    from lcm.module import ConceptLM
    from lcm.token_model import TokenLM

    arch = LCMConfig(embed_dim=8, d_model=16, n_layer=1, n_head=2, max_seq_len=8, dropout=0.0)
    if kind == "token":
        return TokenLM(arch=arch, vocab_size=MIN_VOCAB, **kw)
    return {"concept": ConceptLM, "diffusion": DiffusionLCM}[kind](arch=arch, **kw)


@pytest.mark.parametrize("kind", ["concept", "diffusion", "token"])
def test_compile_flag_round_trips_and_compiles_in_place_only_for_fit(kind):
    from types import SimpleNamespace

    m = _tiny(kind)
    assert m.hparams.compile is False
    hp = dict(m.hparams)
    hp.pop("compile")  # a checkpoint from before the flag
    assert type(m)(**hp).hparams.compile is False
    m = type(m)(**{**hp, "compile": True})
    assert m.hparams.compile is True
    keys = set(m.state_dict())

    def compiled() -> bool:  # nn.Module.compile is lazy: nothing is compiled until the first call
        return any(getattr(mod, "_compiled_call_impl", None) is not None for mod in m.net.modules())

    for fn in ("validate", "fit"):
        m._trainer = SimpleNamespace(state=SimpleNamespace(fn=fn))
        m.configure_model()
        assert compiled() == (fn == "fit")
    m._trainer = None
    assert set(m.state_dict()) == keys  # in place: parameter names (and checkpoints) unchanged
    m2 = _tiny(kind)  # the default path compiles nothing
    m2._trainer = SimpleNamespace(state=SimpleNamespace(fn="fit"))
    m2.configure_model()
    m2._trainer = None
    assert not any(getattr(mod, "_compiled_call_impl", None) is not None for mod in m2.net.modules())


def test_token_loss_without_boolean_indexing_matches_the_masked_mean():
    import torch.nn.functional as F

    torch.manual_seed(0)
    m = _tiny("token")
    tokens = torch.randint(3, m.hparams.vocab_size, (3, 7))
    target = torch.rand(3, 6) > 0.4
    logits, nxt, mask = m._logits({"tokens": tokens, "target": target})  # pre-tokenized batches pass through
    assert logits.shape == (3, 6, m.hparams.vocab_size) and torch.equal(nxt, tokens[:, 1:]) and torch.equal(mask, target)
    ref = F.cross_entropy(logits[mask], nxt[mask])
    assert torch.allclose(m._masked_ce(logits, nxt, mask), ref, atol=1e-6)


def test_rms_norm_is_torchs_with_the_hand_written_numerics():
    """torch.nn.RMSNorm replaced a hand-written norm: same `weight` key, same eps, bitwise-equal float32
    outputs and gradients (so checkpoints load unchanged and training runs reproduce)."""
    from lcm.model import RMSNorm

    norm = RMSNorm(64)
    assert isinstance(norm, torch.nn.RMSNorm) and norm.eps == 1e-6 and list(norm.state_dict()) == ["weight"]
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(64))
    x = (torch.randn(3, 7, 64) * 5).requires_grad_()
    weight = norm.weight.detach().clone().requires_grad_()
    reference = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * weight
    out = norm(x)
    assert torch.equal(out, reference)
    grads = torch.autograd.grad(out.square().sum(), (x, norm.weight))
    assert all(torch.equal(a, b) for a, b in zip(grads, torch.autograd.grad(reference.square().sum(), (x, weight))))


def test_the_concept_stepper_equals_a_full_forward_of_each_row_alone():
    """Left-padded prompts of different lengths, rows leaving the batch: each row's incremental hidden states are
    those of `hidden_states` over that row alone (no padding, no cache)."""
    torch.manual_seed(0)
    net = BaseLCM(LCMConfig(embed_dim=16, d_model=32, n_layer=2, n_head=4, max_seq_len=12, dropout=0.0)).eval()
    seqs = [torch.randn(9, 16) for _ in range(3)]
    starts = [1, 6, 3]  # prompt lengths
    with torch.no_grad():
        stepper = ConceptStepper(net, [s[:k] for s, k in zip(seqs, starts)])
        got = {b: [stepper.last[b]] for b in range(3)}
        rows = [0, 1, 2]
        for t in range(3):
            if t == 2:  # row 1 finished: it leaves the batch
                stepper.keep(torch.tensor([0, 2]))
                rows = [0, 2]
            h = stepper.append(torch.stack([seqs[b][starts[b] + t] for b in rows]))  # (A, d)
            for j, b in enumerate(rows):
                got[b].append(h[j])
        for b, k in enumerate(starts):
            ref = net.hidden_states(seqs[b][None, : k + len(got[b]) - 1])[0, k - 1:]  # (steps, d)
            torch.testing.assert_close(torch.stack(got[b]), ref, atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match="max_seq_len"):
            for _ in range(12):
                stepper.append(torch.randn(2, 16))
