import itertools
import re

import numpy as np
import pytest
import torch

from motif_data import DOMAINS
from motif_data.mixer import MixtureSchedule, QuotaSampler, Stage
from motif_data.shards import ShardError
from motif_data.trainer_hook import (
    DomainExhaustedError,
    MixtureDataLoader,
    MixtureDataset,
    Phase,
    PhasedLoader,
    position_ids,
)

SEQ = 24
SCHED = MixtureSchedule.preset("motif-2.6b", stage1_tokens=400 * SEQ, anneal_tokens=100 * SEQ)


def _reference_stream(docs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The domain's documents joined, and each token's position in its document, from the original docs."""
    return np.concatenate(docs).astype(np.int64), np.concatenate([np.arange(len(d)) for d in docs])


def _key(item) -> bytes:
    return item["input_ids"].numpy().tobytes() + item["position_ids"].numpy().tobytes()


def test_items_are_the_packed_windows_of_the_original_documents(small_build):
    manifest, docs = small_build
    ds = MixtureDataset(manifest, SCHED, SEQ, seed=5)
    dom, _, window = ds.locate(0, 600)
    expected_domains = QuotaSampler(SCHED, SEQ, seed=5).domains(0, 600)
    assert np.array_equal(dom, expected_domains)
    refs = {d: _reference_stream(docs[name]) for d, name in enumerate(DOMAINS)}
    for g, item in enumerate(ds.items(0, 600)):
        d, w = int(dom[g]), int(window[g])
        tokens, positions = refs[d]
        span = slice(w * (SEQ + 1), (w + 1) * (SEQ + 1))
        assert item["domain"].item() == d
        assert item["input_ids"].dtype == torch.int64 and item["input_ids"].shape == (SEQ + 1,)
        assert np.array_equal(item["input_ids"].numpy(), tokens[span])
        assert np.array_equal(item["position_ids"].numpy(), positions[span])


def test_one_epoch_of_a_domain_covers_every_window_once_and_the_next_epoch_reshuffles(small_build):
    manifest, docs = small_build
    code = {d: 0.0 for d in DOMAINS} | {"code": 1.0}
    ds = MixtureDataset(manifest, MixtureSchedule.constant(code), SEQ, seed=1)
    n = ds.domains[DOMAINS.index("code")].sequences
    _, epoch, window = ds.locate(0, 2 * n)
    assert (epoch[:n] == 0).all() and (epoch[n:] == 1).all()
    assert np.array_equal(np.sort(window[:n]), np.arange(n))
    assert np.array_equal(np.sort(window[n:]), np.arange(n))
    assert not np.array_equal(window[:n], window[n:])
    assert ds.epochs(2 * n)["code"] == pytest.approx(2.0)
    strict = MixtureDataset(
        manifest, MixtureSchedule.constant(code), SEQ, seed=1, exhaustion={"code": "error"}
    )
    assert len(list(strict.items(0, n))) == n
    with pytest.raises(DomainExhaustedError, match=f"'code' is exhausted at global sequence {n}"):
        strict.locate(n - 3, n + 3)


def test_packing_keeps_every_token_of_real_documents(tmp_path, corpus, o200k, build_tools):
    _, write_build = build_tools
    import zstandard

    raw = zstandard.ZstdDecompressor().stream_reader(open(corpus["math"], "rb")).read()
    import json

    texts = [json.loads(line)["text"] for line in raw.decode().split("\n")[:60] if line]
    docs = [np.array(o200k.encode_ordinary(t) + [o200k.eot_token], dtype=np.uint32) for t in texts]
    write_build(tmp_path, {"math": docs}, max_tokens=3000)
    seq = 64
    ds = MixtureDataset(tmp_path / "manifest.json", MixtureSchedule.constant({"math": 1.0}), seq, seed=0)
    n = ds.domains[DOMAINS.index("math")].sequences
    _, _, window = ds.locate(0, n)
    by_window = dict(zip(window.tolist(), ds.items(0, n), strict=True))
    joined = np.concatenate([by_window[w]["input_ids"].numpy() for w in range(n)])
    text = o200k.decode(joined.tolist())
    everything = "".join(t + "<|endoftext|>" for t in texts)
    assert len(joined) == n * (seq + 1) > sum(len(d) for d in docs) - (seq + 1)
    assert everything.startswith(text)
    starts = np.concatenate([by_window[w]["position_ids"].numpy() for w in range(n)]) == 0
    assert (joined[np.flatnonzero(starts)[1:] - 1] == o200k.eot_token).all()  # each document follows an EOT


def _run(manifest, world, workers, batch, limit, state=None, seed=7, per_transfer=None):
    """Global order as the trainer sees it: step by step, the ranks' batches in rank order, each sequence
    keyed as `_key` keys a dataset item (int64 tokens and positions)."""
    loaders = []
    for r in range(world):
        ds = MixtureDataset(manifest, SCHED, SEQ, seed, rank=r, world_size=world, batch_size=batch,
                            max_sequences=limit)  # fmt: skip
        dl = MixtureDataLoader(ds, num_workers=workers, batches_per_transfer=per_transfer)
        if state is not None:
            dl.load_state_dict(state)
        loaders.append(dl)
    return _global_order(loaders), loaders[0]


@pytest.mark.parametrize("world", [1, 2, 4])
def test_ranks_and_workers_see_every_global_index_exactly_once_in_order(small_build, world):
    manifest, _ = small_build
    limit = 96  # a multiple of every global batch below
    reference = [_key(x) for x in MixtureDataset(manifest, SCHED, SEQ, seed=7).items(0, limit)]
    assert len(set(reference)) == limit  # distinct windows, so order and duplicates are visible
    # batches per worker hand-over: one, a few (groups interleave over workers), all of them (the default)
    for workers, per_transfer in itertools.product(range(4), (1, 3, None)):
        got, _ = _run(
            manifest, world, workers, batch=3 if world < 4 else 2, limit=limit, per_transfer=per_transfer
        )
        assert got == reference, (world, workers, per_transfer)


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_a_trainer_keeps_stay_intact_while_the_loader_reuses_its_buffers(small_build, workers):
    manifest, _ = small_build
    limit, batch = 600, 3
    reference = [_key(x) for x in MixtureDataset(manifest, SCHED, SEQ, seed=7).items(0, limit)]
    ds = MixtureDataset(manifest, SCHED, SEQ, seed=7, batch_size=batch, max_sequences=limit)
    kept = {}
    # Kept for good: every 7th batch; for two more steps: all of them (as a trainer's prefetch would).
    recent = []
    for step, b in enumerate(MixtureDataLoader(ds, num_workers=workers, batches_per_transfer=2)):
        if step % 7 == 0:
            kept[step] = b
        recent = [*recent[-2:], (step, b)]
        for s, r in recent:  # the batches still held must not have been overwritten by a refill
            assert _keys(r) == reference[s * batch : (s + 1) * batch], (workers, step, s)
    assert len(kept) > 20
    for step, b in kept.items():
        assert _keys(b) == reference[step * batch : (step + 1) * batch], (workers, step)


def _keys(batch) -> list[bytes]:
    ids, pos = batch["input_ids"].long(), position_ids(batch)
    return [ids[i].numpy().tobytes() + pos[i].numpy().tobytes() for i in range(len(batch["domain"]))]


def _global_order(loaders) -> list[bytes]:
    """Step by step, the ranks' batches in rank order, each sequence keyed as `_key` keys an item."""
    return [key for batches in zip(*loaders, strict=True) for b in batches for key in _keys(b)]


def test_resume_is_bitwise_with_other_workers_and_world_sizes(small_build):
    manifest, _ = small_build
    limit = 144
    reference = [_key(x) for x in MixtureDataset(manifest, SCHED, SEQ, seed=7).items(0, limit)]
    # global batch 12 throughout: (world, batch) = (2, 6) -> (4, 3), (1, 12), (3, 4)
    rng = np.random.default_rng(3)
    for (w0, n0), (w1, b1, n1) in [((2, 1), (4, 3, 2)), ((2, 2), (1, 12, 0)), ((2, 0), (3, 4, 3))]:
        steps = int(rng.integers(1, limit // 12))
        loaders = [
            MixtureDataLoader(
                MixtureDataset(manifest, SCHED, SEQ, 7, r, w0, batch_size=6),
                num_workers=n0,
                batches_per_transfer=3,  # the state falls inside a worker's hand-over, mostly
            )
            for r in range(w0)
        ]
        for _ in zip(range(steps), *loaders, strict=False):  # range first: no extra batch is pulled
            pass
        state = loaders[0].state_dict()
        assert state["position"] == steps * 12 and all(dl.state_dict() == state for dl in loaders)
        got, _ = _run(manifest, w1, n1, batch=b1, limit=limit, state=state, per_transfer=2)
        assert got == reference[steps * 12 :], (w0, n0, w1, n1, steps)


def _brute_force_positions(tokens: np.ndarray, eot: int) -> np.ndarray:
    """Position of each token of a domain stream in its document, by walking it: 0 after each EOT."""
    positions, p = [], 0
    for t in tokens.tolist():
        positions.append(p)
        p = 0 if t == eot else p + 1
    return np.array(positions)


@pytest.mark.parametrize("workers", [0, 2])
def test_the_batch_boundary_tensor_gives_the_position_ids_of_a_scan_over_the_tokens(small_build, workers):
    manifest, docs = small_build
    span, batch, limit = SEQ + 1, 5, 200
    streams = {d: np.concatenate(docs[name]).astype(np.int64) for d, name in enumerate(DOMAINS)}
    ds = MixtureDataset(manifest, SCHED, SEQ, seed=3, batch_size=batch, max_sequences=limit)
    eot = ds.manifest.tokenizer.eot_id
    scanned = {d: _brute_force_positions(tokens, eot) for d, tokens in streams.items()}
    dom, _, window = ds.locate(0, limit)
    loader = MixtureDataLoader(ds, num_workers=workers, batches_per_transfer=4)
    g = 0
    for b in loader:
        assert b["input_ids"].dtype == torch.int32 and b["input_ids"].shape == (batch, span)
        assert b["documents"].dtype == torch.int32 and b["domain"].dtype == torch.int64
        rows = [slice(int(w) * span, (int(w) + 1) * span) for w in window[g : g + batch]]
        expected_tokens = np.stack([streams[d][r] for d, r in zip(dom[g : g + batch], rows, strict=True)])
        expected = np.stack([scanned[d][r] for d, r in zip(dom[g : g + batch], rows, strict=True)])
        assert np.array_equal(b["domain"].numpy(), dom[g : g + batch])
        assert np.array_equal(b["input_ids"].numpy(), expected_tokens)
        pos = position_ids(b)
        assert pos.dtype == torch.int64 and np.array_equal(pos.numpy(), expected)
        # cu_seqlens for document masking: every row start and every document start, then the token count
        starts = np.flatnonzero((expected == 0) | (np.arange(span) == 0)[None, :])
        assert np.array_equal(b["documents"][0].numpy(), np.append(starts, batch * span))
        g += batch
    assert g == limit


def test_dataset_state_resumes_mid_batch_in_the_main_process(small_build):
    manifest, _ = small_build
    ds = MixtureDataset(manifest, SCHED, SEQ, seed=2, batch_size=5)
    it = iter(ds)
    head = [_key(next(it)) for _ in range(13)]
    state = ds.state_dict()
    assert state["position"] == 10 and state["item"] == 3
    tail = [_key(x) for x in itertools.islice(it, 20)]
    again = MixtureDataset(manifest, SCHED, SEQ, seed=2, batch_size=5)
    again.load_state_dict(state)
    assert [_key(x) for x in itertools.islice(iter(again), 20)] == tail
    assert head + tail == [_key(x) for x in again.items(0, 33)]
    other_world = MixtureDataset(manifest, SCHED, SEQ, seed=2, rank=0, world_size=5, batch_size=1)
    with pytest.raises(ValueError, match="mid-batch"):
        other_world.load_state_dict(state)


def test_torchdata_stateful_dataloader_resumes_with_workers(small_build):
    from torchdata.stateful_dataloader import StatefulDataLoader

    manifest, _ = small_build

    def make():
        ds = MixtureDataset(
            manifest, SCHED, SEQ, seed=4, rank=1, world_size=2, batch_size=4, max_sequences=160
        )
        return StatefulDataLoader(ds, batch_size=4, num_workers=2)

    dl = make()
    it = iter(dl)
    for _ in range(5):
        next(it)
    state = dl.state_dict()
    rest = [b["input_ids"] for b in it]
    resumed = make()
    resumed.load_state_dict(state)
    again = [b["input_ids"] for b in resumed]
    assert len(rest) == len(again) == 20 - 5 and all(
        torch.equal(a, b) for a, b in zip(rest, again, strict=True)
    )
    full = [_key(x) for x in make().dataset.items(0, 160)]
    assert [x.numpy().tobytes() for x in rest[-1]] == [k[: (SEQ + 1) * 8] for k in full[-4:]]


@pytest.mark.parametrize("saved, resumed", [(2, 1), (2, 0), (0, 2)])
def test_torchdata_state_with_another_num_workers_is_refused_naming_the_fix(small_build, saved, resumed):
    from motif_data.trainer_hook.stateful import StatefulMixtureDataLoader

    manifest, _ = small_build

    def make(workers):
        ds = MixtureDataset(manifest, SCHED, SEQ, seed=4, batch_size=4, max_sequences=80)
        return StatefulMixtureDataLoader(ds, num_workers=workers)

    dl = make(saved)
    it = iter(dl)
    for _ in range(3):
        next(it)
    state = dl.state_dict()
    del it
    # plain torchdata: a bare AssertionError when iterating
    with pytest.raises(ValueError, match=rf"saved with num_workers={saved}.*resume with num_workers={saved}"):
        make(resumed).load_state_dict(state)
    same = make(saved)
    same.load_state_dict(state)
    assert len(list(same)) == 20 - 3


def test_a_state_from_another_configuration_is_refused(small_build):
    manifest, _ = small_build
    state = MixtureDataLoader(MixtureDataset(manifest, SCHED, SEQ, seed=1, batch_size=2)).state_dict()
    for other in (
        MixtureDataset(manifest, SCHED, SEQ, seed=2, batch_size=2),
        MixtureDataset(manifest, SCHED, SEQ + 1, seed=1, batch_size=2),
        MixtureDataset(manifest, MixtureSchedule.preset("motif-2.6b"), SEQ, seed=1, batch_size=2),
    ):
        with pytest.raises(ValueError, match="another configuration"):
            other.load_state_dict(state)
    with pytest.raises(ValueError, match="not a multiple of the global micro-batch 6"):
        MixtureDataset(manifest, SCHED, SEQ, seed=1, batch_size=3, rank=0, world_size=2).load_state_dict(
            state | {"position": 8}
        )


def test_bad_builds_and_arguments_fail_with_a_clear_message(tmp_path, build_tools):
    random_docs, write_build = build_tools
    rng = np.random.default_rng(1)
    manifest = write_build(
        tmp_path, {d: random_docs(rng, 40, i) for i, d in enumerate(DOMAINS) if d != "math"}
    )
    path = tmp_path / "manifest.json"
    with pytest.raises(ValueError, match="draws from \\['math'\\]"):
        MixtureDataset(path, SCHED, SEQ, seed=0)
    no_math = MixtureSchedule([Stage("s", 1e6, {"web": 0.5, "code": 0.5}, {"web": 0.5, "code": 0.5})])
    with pytest.raises(ValueError, match="batches_per_transfer must be a positive integer or None, got 0"):
        MixtureDataLoader(MixtureDataset(path, no_math, SEQ, seed=0), batches_per_transfer=0)
    with pytest.raises(ValueError, match="seq_len must be a positive integer, got 0"):
        MixtureDataset(path, no_math, 0, seed=0)
    with pytest.raises(ValueError, match="tokenizer fingerprint"):
        MixtureDataset(path, no_math, SEQ, seed=0, tokenizer="cd" * 32)
    MixtureDataset(path, no_math, SEQ, seed=0, tokenizer="ab" * 32)
    shard = manifest.domains["code"].shards[0]
    data = (tmp_path / shard.path).read_bytes()
    flipped = bytearray(data)
    flipped[5] ^= 1
    (tmp_path / shard.path).write_bytes(bytes(flipped))
    MixtureDataset(path, no_math, SEQ, seed=0)  # sizes agree: only verification notices
    with pytest.raises(ShardError, match="checksum mismatch"):
        MixtureDataset(path, no_math, SEQ, seed=0, verify=True)
    (tmp_path / shard.path).write_bytes(data[:-4])
    with pytest.raises(ShardError, match="truncated"):
        MixtureDataset(path, no_math, SEQ, seed=0)
    (tmp_path / shard.path).unlink()
    with pytest.raises(ShardError, match="missing"):
        MixtureDataset(path, no_math, SEQ, seed=0)
    (tmp_path / shard.path).write_bytes(data)
    index = tmp_path / shard.index_path
    offsets = np.frombuffer(index.read_bytes(), dtype="<u8").copy()
    index.write_bytes(offsets[:-1].tobytes())  # a truncated .idx: found at start-up, not when first read
    with pytest.raises(ShardError, match=rf"shard {re.escape(str(index))} is truncated"):
        MixtureDataset(path, no_math, SEQ, seed=0)
    offsets[1], offsets[2] = offsets[2], offsets[1]  # a corrupt one of the right size, verify=False
    index.write_bytes(offsets.tobytes())
    code = DOMAINS.index("code")
    ds = MixtureDataset(path, no_math, SEQ, seed=0)
    with pytest.raises(ShardError, match=rf"shard index {re.escape(str(index))} is corrupt: document 1"):
        ds.sequence(code, 0)


# Phases: a short phase at seq_len SHORT, then a long one at SEQ (the page); the same schedule in tokens.
SHORT = SEQ // 3


def _phased(manifest, world, workers, phases, state=None, seed=7):
    """The global order of a PhasedLoader run on ``world`` ranks, as `_run` gives it for one phase."""
    loaders = []
    for r in range(world):
        per_rank = [Phase(p.tokens, p.seq_len, p.micro_batch // world, p.rope_base) for p in phases]
        loader = PhasedLoader(manifest, SCHED, per_rank, seed, rank=r, world_size=world, num_workers=workers)
        if state is not None:
            loader.load_state_dict(state)
        loaders.append(loader)
    return _global_order(loaders), loaders


def _pages_split(manifest, pages: range, parts: int, seed=7) -> list[bytes]:
    """Independent reference: the pages of a run without phases at seq_len SEQ, each cut into ``parts``
    windows of SEQ / parts + 1 tokens whose last token is the next window's first."""
    out, n = [], SEQ // parts
    for item in MixtureDataset(manifest, SCHED, SEQ, seed=seed).items(pages.start, pages.stop):
        ids, pos = item["input_ids"].numpy(), item["position_ids"].numpy()
        out += [
            ids[r * n : r * n + n + 1].tobytes() + pos[r * n : r * n + n + 1].tobytes() for r in range(parts)
        ]
    return out


# 12 global micro-batches of 12 short sequences (48 pages), then 10 of 4 long ones; global batches 12 and 4.
PHASES = [Phase(12 * 12 * SHORT, SHORT, 12, 10_000.0), Phase(10 * 4 * SEQ, SEQ, 4, 500_000.0)]


def test_two_ranks_and_two_workers_cover_the_stream_exactly_once_across_a_seq_len_switch(small_build):
    manifest, _ = small_build
    first = PHASES[0].tokens // SEQ  # pages of the short phase
    reference = _pages_split(manifest, range(first), 3) + _pages_split(manifest, range(first, first + 40), 1)
    assert len(set(reference)) == len(reference) == 12 * 12 + 10 * 4
    got, loaders = _phased(manifest, world=2, workers=2, phases=PHASES)
    assert got == reference
    assert loaders[0].state_dict()["tokens"] == PHASES[0].tokens + PHASES[1].tokens


@pytest.mark.parametrize("steps", [5, 12, 15])  # before, at and after the switch (after step 12)
def test_a_phased_stream_resumes_bitwise_before_at_and_after_the_switch_with_another_layout(
    small_build, steps
):
    manifest, _ = small_build
    whole, _ = _phased(manifest, world=1, workers=0, phases=PHASES)
    loaders = [
        PhasedLoader(
            manifest,
            SCHED,
            [Phase(p.tokens, p.seq_len, p.micro_batch // 2, p.rope_base) for p in PHASES],
            7,
            rank=r,
            world_size=2,
            num_workers=2,
        )  # fmt: skip
        for r in range(2)
    ]
    for _ in zip(range(steps), *loaders, strict=False):
        pass
    state = loaders[0].state_dict()
    assert all(dl.state_dict() == state for dl in loaders)
    # Tokens consumed, counted independently: 12 short micro-batches of 12 × SHORT, then long ones of 4 × SEQ.
    tokens = 12 * SHORT * min(steps, 12) + 4 * SEQ * max(steps - 12, 0)
    assert (state["phase"], state["tokens"]) == (int(steps >= 12), tokens)
    done = 12 * min(steps, 12) + 4 * max(steps - 12, 0)  # sequences
    for world, workers in ((1, 2), (4, 0)):
        got, _ = _phased(manifest, world=world, workers=workers, phases=PHASES, state=state)
        assert got == whole[done:], (steps, world, workers)


def test_one_epoch_in_phases_trains_on_every_token_of_a_domain_once(small_build):
    manifest, docs = small_build
    code = MixtureSchedule.constant({d: 0.0 for d in DOMAINS} | {"code": 1.0})
    stream = np.concatenate(docs["code"]).astype(np.int64)
    pages = len(stream) // (SEQ + 1)
    # A micro-batch is one page in either phase: 3 short windows or 1 long one; the switch at 60 % of it.
    short = int(0.6 * pages)
    phases = [Phase(short * SEQ, SHORT, 3, 1e4), Phase((pages - short) * SEQ, SEQ, 1, 5e5)]
    loader = PhasedLoader(manifest, code, phases, 1, num_workers=2, exhaustion="error")
    inputs = [row[:-1] for b in loader for row in b["input_ids"].long().numpy()]
    # What the model reads as inputs: each page of SEQ + 1 tokens, less its last token (a target only).
    expected = np.concatenate([stream[p * (SEQ + 1) : p * (SEQ + 1) + SEQ] for p in range(pages)])
    assert np.array_equal(np.sort(np.concatenate(inputs)), np.sort(expected))


def test_bad_phases_and_a_state_without_phases_are_refused_naming_the_fix(small_build):
    manifest, _ = small_build
    with pytest.raises(ValueError, match="seq_len 10 does not divide the longest seq_len 24"):
        PhasedLoader(manifest, SCHED, [Phase(240, 10, 1, 1e4), Phase(240, SEQ, 1, 1e4)], 0)
    with pytest.raises(ValueError, match="phase 0: 100 tokens .* make it a multiple of 48"):
        PhasedLoader(manifest, SCHED, [Phase(100, SHORT, 6, 1e4), Phase(240, SEQ, 1, 1e4)], 0)
    plain = MixtureDataLoader(MixtureDataset(manifest, SCHED, SEQ, seed=7)).state_dict()
    with pytest.raises(ValueError, match="no phase: it comes from a run without"):
        PhasedLoader(manifest, SCHED, PHASES, 7).load_state_dict(plain)
    other = PhasedLoader(manifest, SCHED, [Phase(PHASES[0].tokens + 12 * SEQ, SHORT, 12, 1e4), PHASES[1]], 7)
    with pytest.raises(ValueError, match="another configuration"):
        other.load_state_dict(PhasedLoader(manifest, SCHED, PHASES, 7).state_dict() | {"phase": 1})
