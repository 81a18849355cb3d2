import pytest
import torch

from lcm.model import BaseLCM, LCMConfig
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
