"""tuneserve's grouped LoRA ops against vLLM's own CPU ops, through the punica wrapper API the
LoRA layers call (linear with slices, shrink/expand, embedding, logits), on random shapes.

The reference is vLLM's `PunicaWrapperCPU` with one extra all-zero adapter slot at the end: its
ops index slot -1 for rows without an adapter, so with that slot empty they compute exactly the
documented semantics ("-1 means no LoRA"), which is what the grouped ops implement for any slots.
"""

import random

import pytest
import torch
from vllm.lora.layers.utils import LoRAMapping
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

import tuneserve.engine.lora_kernels as kernels
from tuneserve.engine.lora_ops import GroupedPunicaWrapperCPU

VOCAB = 1000
TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


def wrappers(rows: int, ids: list[int], lora_index_to_id: list, prefill: bool):
    """vLLM's wrapper and tuneserve's, with the same step: `ids[i]` is row i's adapter id (0 = none)."""
    made = []
    for cls in (PunicaWrapperCPU, GroupedPunicaWrapperCPU):
        w = cls(4096, 256, "cpu")
        # prefill: one request per run of equal ids; decode: one request per row
        prompt = [i for j, i in enumerate(ids) if not prefill or j == 0 or ids[j - 1] != i]
        w.update_metadata(LoRAMapping(ids, prompt, is_prefill=prefill), lora_index_to_id, len(lora_index_to_id), VOCAB)
        made.append(w)
    return made


def step(rng: random.Random, rows: int, slots: int, used: int, with_base_rows: bool, prefill: bool):
    """A step on `slots` adapter slots (the last kept empty for the reference), `used` of them active."""
    lora_index_to_id = [10 + s for s in range(slots - 1)] + [None]
    active = rng.sample(range(slots - 1), used)
    choices = [10 + s for s in active] + ([0] if with_base_rows else [])
    if prefill:  # contiguous runs, as vLLM lays out prefill tokens
        ids, cuts = [], sorted(rng.sample(range(1, rows), min(rows - 1, 3))) if rows > 1 else []
        for start, end in zip([0, *cuts], [*cuts, rows], strict=True):
            ids += [rng.choice(choices)] * (end - start)
    else:
        ids = [rng.choice(choices) for _ in range(rows)]
    return ids, lora_index_to_id


def stacked(slots: int, a: int, b: int, dtype, zero_slots=()):
    w = torch.randn(slots, 1, a, b, dtype=torch.float32).to(dtype) / 4
    w[-1] = 0  # the reference's empty slot
    for s in zero_slots:
        w[s] = 0
    return w


CASES = [  # rows, slots (incl. the empty one), adapters used, rows without adapter, prefill
    (1, 2, 1, False, False), (7, 5, 4, True, False), (32, 5, 1, False, False), (32, 5, 2, True, False),
    (32, 9, 8, True, False), (300, 5, 3, True, True), (300, 5, 1, False, True), (64, 5, 4, False, True),
]


@pytest.fixture(params=["stacked", "grouped"])
def strategy(request, monkeypatch):
    """Each strategy on every case, whatever the measured crossover would pick."""
    monkeypatch.setattr(kernels, "STACKED_MAX_COLUMNS", 1 << 62 if request.param == "stacked" else 0)
    return request.param


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=[f"rows{c[0]}-slots{c[1]}-used{c[2]}{'-base' if c[3] else ''}{'-prefill' if c[4] else ''}" for c in CASES])
def test_linear_with_slices_matches_vllm(case, dtype, strategy):
    rows, slots, used, base_rows, prefill = case
    rng = random.Random(hash(case) % 1000)
    torch.manual_seed(rng.randrange(1000))
    ids, mapping = step(rng, rows, slots, used, base_rows, prefill)
    reference, ours = wrappers(rows, ids, mapping, prefill)
    rank, hidden, sizes = rng.choice([8, 16]), 96, (64, 32, 32)  # a qkv-like layer with 3 slices
    active = sorted({i - 10 for i in ids if i})
    zero = (active[0],) if len(active) > 1 else ()  # an adapter that leaves this layer alone
    a = tuple(stacked(slots, rank, hidden, dtype, zero) for _ in sizes)
    b = tuple(stacked(slots, size, rank, dtype, zero if i != 1 else range(slots)) for i, size in enumerate(sizes))
    a[0][:, :, rank - 3 :] = 0  # slice 0's adapters use less than the engine's max rank (vLLM pads)
    b[0][:, :, :, rank - 3 :] = 0
    x = torch.randn(rows, hidden, dtype=dtype)
    y0 = torch.randn(rows, sum(sizes), dtype=dtype)
    want, got = y0.clone(), y0.clone()
    reference.add_lora_linear(want, x, a, b, 1.0, sizes)
    ours.add_lora_linear(got, x, a, b, 1.0, sizes)
    torch.testing.assert_close(got, want, **TOLERANCE[dtype])
    assert not torch.equal(got, y0)  # the case did apply a delta

    # The same layer through separate shrink and expand (row-parallel layers call them so), with a scale.
    bufs_want = tuple(torch.zeros(rows, rank) for _ in sizes)
    bufs_got = tuple(torch.full((rows, rank), 7.0) for _ in sizes)  # shrink must overwrite
    reference.add_shrink(bufs_want, x, a, 0.5)
    ours.add_shrink(bufs_got, x, a, 0.5)
    for g, w in zip(bufs_got, bufs_want, strict=True):
        torch.testing.assert_close(g, w, **TOLERANCE[torch.float32 if dtype == torch.float32 else dtype])
    want, got = y0.clone(), y0.clone()
    reference.add_expand(want, bufs_want, b, sizes, offset_start=0, add_inputs=True)
    ours.add_expand(got, bufs_want, b, sizes, offset_start=0, add_inputs=True)
    torch.testing.assert_close(got, want, **TOLERANCE[dtype])
    want, got = y0.clone(), y0.clone()
    reference.add_expand(want, bufs_want, b, sizes, offset_start=0, add_inputs=False)
    ours.add_expand(got, bufs_want, b, sizes, offset_start=0, add_inputs=False)
    torch.testing.assert_close(got, want, **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("prefill", [False, True], ids=["decode", "prefill"])
def test_embedding_and_logits_match_vllm(dtype, prefill, strategy):
    rng = random.Random(5)
    torch.manual_seed(5)
    rows, slots, rank, hidden = 40, 5, 8, 64
    ids, mapping = step(rng, rows, slots, 3, True, prefill)
    reference, ours = wrappers(rows, ids, mapping, prefill)
    # embedding: y += x @ B (x is the rows' lookup in the adapters' A embeddings); B wider than y (padding)
    x = torch.randn(rows, rank, dtype=dtype)
    b = stacked(slots, hidden + 8, rank, dtype)
    y0 = torch.randn(rows, hidden, dtype=dtype)
    want, got = y0.clone(), y0.clone()
    reference.add_lora_embedding(want, x, b)
    ours.add_lora_embedding(got, x, b)
    torch.testing.assert_close(got, want, **TOLERANCE[dtype])
    # logits: one row per request (the sampled rows), vocab-wide output (the grouped path)
    requests = len(reference.sampler_indices)
    h = torch.randn(requests, hidden, dtype=dtype)
    a, b = stacked(slots, rank, hidden, dtype), stacked(slots, VOCAB, rank, dtype)
    y0 = torch.randn(requests, VOCAB, dtype=dtype)
    want, got = y0.clone(), y0.clone()
    reference.add_lora_logits(want, h, a, b, 1.0)
    ours.add_lora_logits(got, h, a, b, 1.0)
    torch.testing.assert_close(got, want, **TOLERANCE[dtype])
    assert not torch.equal(got, y0)


def test_no_adapter_in_the_step_leaves_outputs_untouched():
    reference, ours = wrappers(16, [0] * 16, [10, 11, None], prefill=False)
    a, b = (stacked(3, 8, 32, torch.float32),), (stacked(3, 48, 8, torch.float32),)
    y0 = torch.randn(16, 48)
    got = y0.clone()
    ours.add_lora_linear(got, torch.randn(16, 32), a, b, 1.0, (48,))
    assert torch.equal(got, y0)


def test_a_hot_swapped_adapter_is_seen_on_the_next_call():
    """Zero slots are skipped and weight layouts cached: both must follow in-place weight writes."""
    ids = [10] * 8 + [11] * 8
    reference, ours = wrappers(16, ids, [10, 11, None], prefill=False)
    a, b = stacked(3, 8, 32, torch.float32, zero_slots=(1,)), stacked(3, 48, 8, torch.float32, zero_slots=(1,))
    x, y0 = torch.randn(16, 32), torch.randn(16, 48)
    for _ in range(2):  # slot 1 empty, then loaded (vLLM's set_lora copies into the slot in place)
        want, got = y0.clone(), y0.clone()
        reference.add_lora_linear(want, x, (a,), (b,), 1.0, (48,))
        ours.add_lora_linear(got, x, (a,), (b,), 1.0, (48,))
        torch.testing.assert_close(got, want)
        a[1, 0].copy_(torch.randn(8, 32))
        b[1, 0].copy_(torch.randn(48, 8))
    assert not torch.equal(got[8:], y0[8:])


def test_rows_without_adapter_get_no_delta_even_with_every_slot_full():
    """vLLM 0.32's CPU ops index slot -1 for rows without an adapter: once the last slot holds an
    adapter, a base-model request sharing a decode step gets that adapter's delta. Ours do not."""
    ids = [10, 0, 11, 0]
    reference, ours = wrappers(4, ids, [10, 11], prefill=False)
    a, b = torch.randn(2, 1, 8, 32), torch.randn(2, 1, 48, 8)
    x, y0 = torch.randn(4, 32), torch.zeros(4, 48)
    want, got = y0.clone(), y0.clone()
    reference.add_lora_linear(want, x, (a,), (b,), 1.0, (48,))
    ours.add_lora_linear(got, x, (a,), (b,), 1.0, (48,))
    assert torch.equal(got[[1, 3]], y0[[1, 3]])  # base rows untouched
    torch.testing.assert_close(got[[0, 2]], want[[0, 2]])  # adapter rows as vLLM
    torch.testing.assert_close(want[[1, 3]], x[[1, 3]] @ a[1, 0].t() @ b[1, 0].t())  # vLLM's: slot -1's delta


def test_layers_no_adapter_of_the_step_changes_are_skipped():
    """An adapter of q and v: the LoRA o_proj runs as its base layer, q/k/v does not."""
    from types import SimpleNamespace

    ids = [10] * 4 + [0] * 4
    _, ours = wrappers(8, ids, [10, 11, None], prefill=False)
    qkv = SimpleNamespace(lora_a_stacked=(stacked(3, 8, 32, torch.float32, zero_slots=(1,)),) * 3,
                          lora_b_stacked=(stacked(3, 48, 8, torch.float32, zero_slots=(1,)),) * 3)
    o_proj = SimpleNamespace(lora_a_stacked=(torch.zeros(3, 1, 8, 32),), lora_b_stacked=(torch.zeros(3, 1, 32, 8),))
    x = torch.randn(8, 32)
    assert not ours.skips(qkv, x)
    assert ours.skips(o_proj, x)
    assert not ours.skips(o_proj, torch.randn(5, 32))  # rows that are not this step's: vLLM's path
    _, idle = wrappers(8, [0] * 8, [10, 11, None], prefill=False)
    assert idle.skips(qkv, x)
    _, other = wrappers(8, [11] * 8, [10, 11, None], prefill=False)
    assert other.skips(qkv, x)  # slot 1's adapter has no q/k/v weights


@pytest.mark.parametrize("strategy", ["stacked", "grouped"], indirect=True)
def test_a_rows_result_does_not_depend_on_the_rest_of_its_step(strategy):
    """Bit for bit in bf16: a request's output must not change with who shares its step."""
    rng = random.Random(3)
    torch.manual_seed(3)
    rows, sizes = 24, (64, 32, 32)
    ids, mapping = step(rng, rows, 5, 4, True, prefill=False)
    a = tuple(stacked(5, 8, 96, torch.bfloat16) for _ in sizes)
    b = tuple(stacked(5, size, 8, torch.bfloat16, () if i != 1 else range(5)) for i, size in enumerate(sizes))
    x, y0 = torch.randn(rows, 96, dtype=torch.bfloat16), torch.randn(rows, sum(sizes), dtype=torch.bfloat16)
    _, together = wrappers(rows, ids, mapping, prefill=False)
    got = y0.clone()
    together.add_lora_linear(got, x, a, b, 1.0, sizes)
    for i in range(rows):
        _, alone = wrappers(1, ids[i : i + 1], mapping, prefill=False)
        one = y0[i : i + 1].clone()
        alone.add_lora_linear(one, x[i : i + 1], a, b, 1.0, sizes)
        assert torch.equal(one, got[i : i + 1]), i
