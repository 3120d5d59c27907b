import itertools

import numpy as np
import torch

from perturbcast.modules import RMSNorm, SetEncoder, SwiGLU, ot_pairing, sinkhorn_plan
from perturbcast.modules.ot import squared_distances


def _encoder(seed=0, **kw):
    torch.manual_seed(seed)
    enc = SetEncoder(n_in=12, n_out=5, dim=32, depth=2, n_heads=4, cond_dim=16, **kw)
    # adaLN-zero makes blocks the identity at init; randomise so the test exercises attention
    for p in enc.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return enc.double()


def test_shapes_and_norms():
    x = torch.randn(3, 7, 12)
    assert SwiGLU(12)(x).shape == x.shape
    y = RMSNorm(12)(x)
    torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(3, 7), atol=1e-4, rtol=0)
    enc = _encoder()
    out = enc(x.double(), torch.randn(3, 16, dtype=torch.float64))
    assert out.shape == (3, 7, 5)


def test_set_encoder_is_permutation_equivariant():
    enc = _encoder()
    x = torch.randn(2, 9, 12, dtype=torch.float64)
    cond = torch.randn(2, 16, dtype=torch.float64)
    perm = torch.randperm(9)
    out = enc(x, cond)
    torch.testing.assert_close(enc(x[:, perm], cond), out[:, perm])
    # cells interact: changing one cell changes the others' outputs
    x2 = x.clone()
    x2[:, 0] += 1.0
    assert not torch.allclose(enc(x2, cond)[:, 1:], out[:, 1:])


def test_padding_mask_hides_padded_cells():
    enc = _encoder()
    x = torch.randn(1, 6, 12, dtype=torch.float64)
    cond = torch.randn(1, 16, dtype=torch.float64)
    mask = torch.tensor([[True, True, True, True, False, False]])
    a = enc(x, cond, mask)[:, :4]
    x[:, 4:] = 100.0  # padded cells' values must not matter
    torch.testing.assert_close(enc(x, cond, mask)[:, :4], a)
    torch.testing.assert_close(enc(x[:, :4], cond), a)


def test_condition_changes_output():
    enc = _encoder()
    x = torch.randn(1, 5, 12, dtype=torch.float64)
    assert not torch.allclose(enc(x, torch.zeros(1, 16, dtype=torch.float64)),
                              enc(x, torch.ones(1, 16, dtype=torch.float64)))


def test_exact_ot_pairing_is_optimal():
    rng = np.random.default_rng(0)
    for _ in range(5):
        x0 = torch.tensor(rng.normal(size=(6, 3)))
        x1 = torch.tensor(rng.normal(size=(6, 3)))
        cost = squared_distances(x0, x1).numpy()
        best = min(sum(cost[i, p[i]] for i in range(6)) for p in itertools.permutations(range(6)))
        perm = ot_pairing(x0, x1).numpy()
        assert sorted(perm) == list(range(6))
        assert sum(cost[i, perm[i]] for i in range(6)) == np.float64(best) or np.isclose(
            sum(cost[i, perm[i]] for i in range(6)), best)


def test_sinkhorn_pairing_is_a_near_optimal_permutation():
    rng = np.random.default_rng(1)
    x0 = torch.tensor(rng.normal(size=(40, 4)))
    x1 = x0[torch.randperm(40)] + 0.01 * torch.tensor(rng.normal(size=(40, 4)))
    plan = sinkhorn_plan(squared_distances(x0, x1), reg=0.01)
    torch.testing.assert_close(plan.sum(1), torch.full((40,), 1 / 40, dtype=plan.dtype),
                               atol=1e-6, rtol=0)
    perm = ot_pairing(x0, x1, exact_max=10)
    exact = ot_pairing(x0, x1)
    assert sorted(perm.tolist()) == list(range(40))
    cost = squared_distances(x0, x1)
    approx_cost = cost[torch.arange(40), perm].sum()
    exact_cost = cost[torch.arange(40), exact].sum()
    assert approx_cost <= exact_cost * 1.05 + 1e-9


def test_flow_samplers_recover_an_oracle_transport():
    from perturbcast.modules.flow import endpoint_loss, interpolate, sample

    torch.manual_seed(0)
    x0 = torch.randn(3, 8, 5, dtype=torch.float64)
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0], dtype=torch.float64)
    x1 = 1.5 * x0 + shift

    def oracle(x, t):  # the exact endpoint of the straight path through x at time t
        tt = t.view(-1, 1, 1)
        x0_of_x = (x - tt * shift) / (1 + 0.5 * tt)
        return 1.5 * x0_of_x + shift

    # with the exact endpoint the path is straight: one-stage solvers are exact; RK4 only
    # feels the t <= 1 - 1e-3 clamp of its last stage
    for solver, atol in (("euler", 1e-10), ("midpoint", 1e-10), ("rk4", 1e-4)):
        out = sample(oracle, x0, steps=8, solver=solver)
        torch.testing.assert_close(out, x1, atol=atol, rtol=0, msg=solver)
    wrong = sample(lambda x, t: x, x0, steps=8)  # an identity "network" moves nothing
    torch.testing.assert_close(wrong, x0)
    xt = interpolate(x0, x1, torch.full((3,), 0.3, dtype=torch.float64))
    torch.testing.assert_close(oracle(xt, torch.full((3,), 0.3, dtype=torch.float64)), x1)
    assert endpoint_loss(x1, x1) == 0
