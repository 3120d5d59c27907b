import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from perturbcast.data.convert import convert
from perturbcast.data.store import StoreMatrix
from perturbcast.data.store_sampler import StoreSetDataset, StoreSetSampler, csr_batch_to_dense


@pytest.fixture(scope="module")
def store(tmp_path_factory, sim_adata):
    d = tmp_path_factory.mktemp("sampler")
    sim_adata.write_h5ad(d / "sim.h5ad")
    return convert([d / "sim.h5ad"], d / "st", "perturbation", "control",
                   context_key="context", batch_key="batch")


def _rows(batches, key):
    return [b[key].rows for b in batches]


def test_sets_are_matched_contiguous_and_deterministic(store):
    smp = StoreSetSampler(store, set_size=8, n_sets=3, seed=1)
    groups = pd.read_csv(store / "groups.csv", keep_default_na=False)
    b = smp.batch(0, 0)
    assert b["pert"].rows.shape == (3, 8) and b["ctrl"].rows.shape == (3, 8)
    for g, pert, ctrl in zip(b["group"], b["pert"].rows, b["ctrl"].rows, strict=True):
        grp = smp.groups.iloc[g]
        assert grp.start <= pert.min() and pert.max() < grp.stop
        assert (np.diff(pert) == 1).all()  # one contiguous read
        home = groups[(groups.start <= ctrl[0]) & (ctrl[0] < groups.stop)].iloc[0]
        assert home.perturbation == "control"
        assert (home.context, home.batch) == (grp.context, grp.batch)
        assert home.start <= ctrl.min() and ctrl.max() < home.stop
    dense = csr_batch_to_dense(*(torch.from_numpy(a) for a in (b["pert"].ptr, b["pert"].indices,
                                                                b["pert"].data)), 24, 80)
    np.testing.assert_allclose(dense.numpy(), StoreMatrix(store).rows(b["pert"].rows.ravel()))
    same = StoreSetSampler(store, set_size=8, n_sets=3, seed=1)
    other = StoreSetSampler(store, set_size=8, n_sets=3, seed=2)
    n = smp.n_batches(0)
    a1 = _rows([smp.batch(0, i) for i in range(n)], "pert")
    assert all((x == y).all() for x, y in zip(a1, _rows([same.batch(0, i) for i in range(n)],
                                                         "pert"), strict=True))
    assert any((x != y).any() for x, y in zip(a1, _rows([other.batch(0, i) for i in range(n)],
                                                         "pert"), strict=True))
    epoch1 = _rows([smp.batch(1, i) for i in range(n)], "pert")
    assert any((x != y).any() for x, y in zip(a1, epoch1, strict=True))  # reshuffled per epoch


def test_ranks_get_disjoint_sets_and_equal_steps(store):
    ranks = [StoreSetSampler(store, set_size=4, n_sets=2, seed=0, rank=r, world_size=3)
             for r in range(3)]
    steps = {s.n_batches(0) for s in ranks}
    assert len(steps) == 1 and steps.pop() > 0
    seen = [np.concatenate([s.batch(0, i)["pert"].rows.ravel() for i in range(s.n_batches(0))])
            for s in ranks]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not set(seen[i]) & set(seen[j])
    single = StoreSetSampler(store, set_size=4, n_sets=2, seed=0)
    assert single.epoch_sets(0).shape[0] >= sum(s.epoch_sets(0).shape[0] for s in ranks)


def test_dataloader_with_two_workers_matches_sequential(store):
    smp = StoreSetSampler(store, set_size=8, n_sets=2, seed=3)
    assert len(pickle.dumps(smp)) < 20_000  # spawned workers reopen the maps, no copy
    again = pickle.loads(pickle.dumps(smp))
    assert (again.batch(0, 1)["pert"].data == smp.batch(0, 1)["pert"].data).all()
    ds = StoreSetDataset(smp, epoch=2)
    expect = [smp.batch(2, i)["pert"].rows for i in range(len(ds))]
    got = [b["pert"].rows for b in DataLoader(ds, batch_size=None, num_workers=2)]
    assert len(got) == len(expect)
    assert all((x == y).all() for x, y in zip(got, expect, strict=True))


def test_groups_smaller_than_a_set_are_drawn_with_replacement(store):
    smp = StoreSetSampler(store, set_size=40, n_sets=2, seed=0)  # every group has < 40 cells
    b = smp.batch(0, 0)
    for g, pert in zip(b["group"], b["pert"].rows, strict=True):
        grp = smp.groups.iloc[g]
        assert pert.size == 40 and grp.start <= pert.min() and pert.max() < grp.stop
    p = b["pert"]
    dense = csr_batch_to_dense(torch.from_numpy(p.ptr), torch.from_numpy(p.indices),
                               torch.from_numpy(p.data), 80, 80)
    np.testing.assert_allclose(dense.numpy(), StoreMatrix(store).rows(p.rows.ravel()))
