import numpy as np

from motif_data.mixer import permute


def test_permute_is_a_bijection_for_awkward_sizes():
    for n in [1, 2, 3, 5, 17, 64, 65, 1000, 4097, 123_457]:
        out = permute(np.arange(n), n, key=n * 7 + 1)
        assert np.array_equal(np.sort(out), np.arange(n)), n


def test_keys_give_different_shuffles_and_same_key_same_shuffle():
    n = 10_000
    a, b = permute(np.arange(n), n, key=1), permute(np.arange(n), n, key=2)
    assert not np.array_equal(a, b)
    assert np.array_equal(a, permute(np.arange(n), n, key=1))
    # evaluated piecewise or out of order, the image of each x is the same
    idx = np.random.default_rng(0).permutation(n)
    assert np.array_equal(permute(idx, n, key=1), a[idx])
    # a shuffle, not a shift: neighbours land far apart and few points stay fixed
    assert np.mean(np.abs(np.diff(a.astype(np.int64)))) > n / 5
    assert np.sum(a == np.arange(n)) < 10
