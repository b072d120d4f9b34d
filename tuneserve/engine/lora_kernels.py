"""Grouped multi-LoRA ops for vLLM's CPU engine, with the semantics of vLLM's `bgmv_*` / `sgmv_*`.

vLLM's CPU path (`vllm/lora/ops/torch_ops/lora_ops.py`) gathers a copy of every token's adapter
matrices (`lora_b_weights[lora_indices_tensor]`, tokens x out x rank) and multiplies them one
token at a time with `einsum`, in every LoRA-wrapped layer and slice, including those no loaded
adapter touches (their weights are zeros), and in the logits processor (tokens x vocab x rank
copied every step).

Here each engine step is planned once (`LoraPlan`: the step's adapter slot per row) and every
op runs as a few plain GEMMs on weights laid out once:
- Slots whose weights are all zero in a layer are not that layer's adapters: an adapter of
  q_proj and v_proj costs nothing in o_proj, the MLP, the k slice or the logits, and a layer
  none of the step's rows' adapters change is skipped. Which slots are non-zero, and the rank
  they use (vLLM pads every adapter to --max-lora-rank), are read once per weight version
  (`torch.Tensor._version` moves on every in-place write: `set_lora`, `reset_lora`), so a
  hot-swapped adapter is seen on its next step.
- `linear` (every projection) fuses the slices of a packed layer (q/k/v, gate/up) and the
  layer's loaded adapters into one shrink GEMM against their A matrices side by side and one
  expand GEMM against their B matrices laid out block-wise ("stacked"), each row masked to its
  own adapter's columns (exact: a multiply by 1 or 0). Layers with many adapter columns run
  "grouped" instead: each adapter's rows gathered and multiplied on their own, no wasted
  arithmetic. `STACKED_MAX_COLUMNS` is the crossover measured by `examples/bench/lora_kernels.py`.
- `shrink` / `expand` (the separate halves vLLM's row-parallel, embedding and logits layers call)
  work the same way per slice; a vocab-wide expand is always grouped (no vocab x adapters copy).
- Batch invariance: the layout and strategy of a layer follow its loaded weights, never the
  step's mix, and the GEMMs here give a row the same bits whatever the other rows (checked on
  this CPU), so a request's greedy output does not depend on who shares its steps, as with
  vLLM's per-token ops.

Rows with slot -1 get no LoRA delta: what vLLM's GPU kernels do and its CPU ops mean to do (they
index slot -1, the last adapter slot, which is right only while that slot is empty; see
docs/upstream/vllm-cpu-lora-kernels.md).

Numerics are vLLM's, rounding for rounding: the shrink runs in float32 (vLLM's "buffer"),
its result is rounded to the output dtype, the expand GEMM's result is rounded too, then added
to the output; only the order of the float32 accumulations differs. Computing in bf16 with one
rounding instead was measurably cheaper on prefill but moved near-tie greedy tokens of the
example adapters away from vLLM's answers.
"""

from __future__ import annotations

import weakref

import torch

# "Stacked" (2 GEMMs over every loaded adapter of a layer) multiplies every row by every
# adapter's columns; "grouped" (2 GEMMs per adapter in the step) does no wasted arithmetic but
# makes more calls. examples/bench/lora_kernels.py on a 2-core AVX-512 CPU, 4 rank-8 adapters of
# q and v loaded (64 columns): stacked ties or wins on decode steps (32 rows: 122 us against
# 111-277) and loses ~1.5x on a 2,048-token prefill. The choice may not depend on the step
# (batch invariance) and decode dominates serving, so layers up to this many columns stack.
STACKED_MAX_COLUMNS = 256
# Outputs wider than this (the logits) are never stacked: that would copy width x adapters x rank.
STACKED_MAX_OUT = 8192
# vLLM's "buffer" dtype: the shrink runs in it, from float32 copies of the inputs.
BUFFER_DTYPE = torch.float32


class LoraPlan:
    """Which adapter slot each row of one engine step uses, grouped for the ops below."""

    def __init__(self, indices: torch.Tensor):
        self.rows = int(indices.numel())
        self.indices = indices
        slots = [s for s in torch.unique(indices).tolist() if s >= 0]  # sorted
        self.slots = slots
        self.none = not slots
        self._onehot: dict[tuple, torch.Tensor] = {}
        self._groups: list[tuple[int, torch.Tensor]] | None = None
        self.layer_memo: dict[int, bool] = {}  # per LoRA layer: nothing to add in this step

    def onehot(self, slots: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """[rows, len(slots), 1]: 1 where the row uses that slot (all zeros for slot -1)."""
        key = (slots, dtype)
        if key not in self._onehot:
            wanted = torch.tensor(slots, dtype=self.indices.dtype)
            self._onehot[key] = (self.indices.unsqueeze(1) == wanted.unsqueeze(0)).to(dtype).unsqueeze(2)
        return self._onehot[key]

    def groups(self) -> list[tuple[int, torch.Tensor]]:
        """(slot, the rows using it) for every active slot."""
        if self._groups is None:
            self._groups = [(s, torch.nonzero(self.indices == s).squeeze(1)) for s in self.slots]
        return self._groups

    def uses_any(self, slots) -> bool:
        return any(s in slots for s in self.slots)


def stacks(num_slots: int, rank_columns: int, width: int = 0) -> bool:
    """Stacked or grouped for a layer, from its loaded weights alone (never from the batch, so a
    row's result does not depend on which other requests share its step); see STACKED_MAX_COLUMNS."""
    return num_slots * rank_columns <= STACKED_MAX_COLUMNS and width <= STACKED_MAX_OUT


class _Facts:
    """What one stacked weight tensor holds at one version: its non-zero slots and used rank."""

    __slots__ = ("ref", "version", "live", "rank")

    def __init__(self, tensor: torch.Tensor, rank_dim: int):
        self.ref = weakref.ref(tensor)
        self.version = tensor._version
        w = _weights(tensor)
        self.live = frozenset(torch.nonzero(w.flatten(1).any(dim=1)).flatten().tolist())
        used = torch.nonzero(w.transpose(1, rank_dim).flatten(2).any(dim=2).any(dim=0)).flatten()
        self.rank = int(used.max()) + 1 if used.numel() else 0


class WeightCache:
    """Facts and GEMM-ready layouts of the stacked LoRA weights, valid while the tensors' version
    counters stand still (vLLM writes adapters into their slots in place)."""

    MAX_LAYOUTS = 4096  # layouts for (tensors, slots, dtype) seen since the last clear

    def __init__(self):
        self._facts: dict[int, _Facts] = {}
        self._layouts: dict[tuple, tuple[tuple, torch.Tensor]] = {}

    def facts(self, tensor: torch.Tensor, rank_dim: int) -> _Facts:
        found = self._facts.get(id(tensor))
        if found is None or found.ref() is not tensor or found.version != tensor._version:
            found = self._facts[id(tensor)] = _Facts(tensor, rank_dim)
        return found

    def slots(self, a: torch.Tensor | None, b: torch.Tensor | None = None) -> tuple[int, ...]:
        """The slots whose adapter has non-zero weights in A (and B): the loaded adapters that
        change this layer, whatever the batch."""
        live = self.facts(a, 1).live if a is not None else None
        if b is not None:
            live = self.facts(b, 2).live if live is None else live & self.facts(b, 2).live
        return tuple(sorted(live))

    def rank(self, a: torch.Tensor) -> int:
        """The rank the loaded adapters use in this A tensor (vLLM pads to --max-lora-rank)."""
        return self.facts(a, 1).rank

    def layout(self, kind: str, tensors: tuple[torch.Tensor, ...], shape: tuple, dtype: torch.dtype,
               build) -> torch.Tensor:
        key = (kind, tuple((id(t), t._version) for t in tensors), shape, dtype)
        found = self._layouts.get(key)
        if found is not None and all(r() is t for r, t in zip(found[0], tensors, strict=True)):
            return found[1]
        if len(self._layouts) >= self.MAX_LAYOUTS:
            self._layouts.clear()
        value = build().to(dtype).contiguous()
        self._layouts[key] = (tuple(weakref.ref(t) for t in tensors), value)
        return value

    def a_side(self, a_tensors: tuple[torch.Tensor, ...], ranks: tuple[int, ...], slots: tuple[int, ...],
               dtype: torch.dtype) -> torch.Tensor:
        """[in, slices*adapters*rank]: each slice's A for each slot (rank cut to what is used), side by side."""
        def build():
            parts = [_weights(a)[list(slots), :r] for a, r in zip(a_tensors, ranks, strict=True)]  # [k, r, in]
            return torch.cat([p.reshape(-1, p.size(-1)) for p in parts]).t()
        return self.layout("a", a_tensors, (slots, ranks), dtype, build)

    def b_side(self, b_tensors: tuple[torch.Tensor, ...], ranks: tuple[int, ...], spans: tuple[tuple[int, int], ...],
               slots: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """[slices*adapters*rank, width]: block-wise, slice i's B for each slot in its own columns."""
        def build():
            width = spans[-1][0] + spans[-1][1] - spans[0][0]
            rows = sum(len(slots) * r for r in ranks)
            out = torch.zeros(rows, width, dtype=b_tensors[0].dtype)
            row = 0
            for b, r, (offset, size) in zip(b_tensors, ranks, spans, strict=True):
                block = _weights(b)[list(slots), :size, :r]  # [k, size, r]
                out[row : row + len(slots) * r, offset - spans[0][0] : offset - spans[0][0] + size] = \
                    block.permute(0, 2, 1).reshape(-1, size)
                row += len(slots) * r
            return out
        return self.layout("b", b_tensors, (slots, ranks, spans), dtype, build)


def _weights(stacked: torch.Tensor) -> torch.Tensor:
    """[slots, 1, a, b] or [slots, a, b] -> [slots, a, b] (a view)."""
    return stacked.squeeze(1) if stacked.dim() == 4 else stacked


def _mask(h: torch.Tensor, plan: LoraPlan, slots: tuple[int, ...], blocks: int) -> torch.Tensor:
    """Zero every column of h [rows, blocks*slots*rank] outside its row's own adapter (exact)."""
    rows, k = h.size(0), len(slots)
    return (h.view(rows, blocks, k, -1) * plan.onehot(slots, h.dtype).view(rows, 1, k, 1)).view(rows, -1)


def linear(cache: WeightCache, plan: LoraPlan, x: torch.Tensor, lora_a: tuple[torch.Tensor, ...],
           lora_b: tuple[torch.Tensor, ...], output_slices: tuple[int, ...], y: torch.Tensor) -> None:
    """y[:, slice i] += x @ A_i[slot(row)]^T @ B_i[slot(row)]^T for every slice i and row: vLLM's
    add_lora_linear (scale 1, as its layers call it). x: [rows, in]; y: [rows, sum(output_slices)].

    The weight layouts (which slices, which slots, what rank) follow the loaded adapters only, so
    every row is computed the same way whatever else is in its step."""
    slice_slots = [cache.slots(a, b) for a, b in zip(lora_a, lora_b, strict=True)]
    live = [i for i, found in enumerate(slice_slots) if found]
    slots = tuple(sorted({s for i in live for s in slice_slots[i]}))
    if not plan.uses_any(slots):
        return  # no row of this step uses an adapter that changes this layer
    offsets = [sum(output_slices[:i]) for i in range(len(output_slices))]
    a_tensors, b_tensors = tuple(lora_a[i] for i in live), tuple(lora_b[i] for i in live)
    ranks = tuple(max(cache.rank(a), 1) for a in a_tensors)
    spans = tuple((offsets[i], output_slices[i]) for i in live)
    target = y[:, spans[0][0] : spans[-1][0] + spans[-1][1]]
    xf = x.to(BUFFER_DTYPE)
    if stacks(len(slots), sum(ranks)):
        h = xf @ cache.a_side(a_tensors, ranks, slots, BUFFER_DTYPE)  # [rows, slices*slots*rank]
        h = _mask(h, plan, slots, len(live)) if len(set(ranks)) == 1 else _mask_ragged(h, plan, slots, ranks)
        target.add_(h.to(y.dtype) @ cache.b_side(b_tensors, ranks, spans, slots, y.dtype))
        return
    for slot, rows in plan.groups():
        if slot in slots:
            h = xf.index_select(0, rows) @ cache.a_side(a_tensors, ranks, (slot,), BUFFER_DTYPE)
            target.index_add_(0, rows, h.to(y.dtype) @ cache.b_side(b_tensors, ranks, spans, (slot,), y.dtype))


def _mask_ragged(h: torch.Tensor, plan: LoraPlan, slots: tuple[int, ...], ranks: tuple[int, ...]) -> torch.Tensor:
    """_mask for slices of different used ranks."""
    parts, start, k = [], 0, len(slots)
    for r in ranks:
        parts.append(_mask(h[:, start : start + k * r], plan, slots, 1))
        start += k * r
    return torch.cat(parts, dim=1)


def shrink(cache: WeightCache, plan: LoraPlan, x: torch.Tensor, lora_a: torch.Tensor, out: torch.Tensor,
           scale: float) -> None:
    """out[:, :rank] = scale * x @ A[slot(row)]^T for every row (0 for rows without an adapter).

    x: [rows, in]; lora_a: [slots, 1, rank, in]; out: [rows, >= rank] (float32 in vLLM).
    """
    target = out[:, : _weights(lora_a).size(1)]
    slots = cache.slots(lora_a)
    if not plan.uses_any(slots):
        target.zero_()
        return
    rank = max(cache.rank(lora_a), 1)
    if rank < target.size(1):
        target[:, rank:].zero_()
        target = target[:, :rank]
    x = x.to(out.dtype)
    if stacks(len(slots), rank):
        h = _mask(x @ cache.a_side((lora_a,), (rank,), slots, out.dtype), plan, slots, 1)
        target.copy_(h.view(h.size(0), len(slots), rank).sum(dim=1))  # one non-zero term per row: exact
    else:
        target.zero_()
        for slot, rows in plan.groups():
            if slot in slots:
                target.index_copy_(0, rows, x.index_select(0, rows) @ cache.a_side((lora_a,), (rank,), (slot,), out.dtype))
    if scale != 1.0:
        target.mul_(scale)


def expand(cache: WeightCache, plan: LoraPlan, x: torch.Tensor, lora_b: torch.Tensor, y: torch.Tensor,
           offset: int, size: int | None, add_inputs: bool) -> None:
    """y[:, offset:offset+size] (+)= x @ B[slot(row)]^T for every row (nothing for rows without an adapter).

    x: [rows, rank] (float32 in vLLM); lora_b: [slots, 1, out, rank]; y: [rows, >= offset+size].
    `size=None` is vLLM's non-slice expand: the common width of B's output and y (padding may differ).
    """
    b = _weights(lora_b)
    width = min(b.size(1), y.size(1) - offset) if size is None else size
    target = y[:, offset : offset + width]
    if not add_inputs:
        target.zero_()
    slots = cache.slots(None, lora_b)
    if not plan.uses_any(slots):
        return
    rank = max(cache.facts(lora_b, 2).rank, 1)  # columns past it meet zeros in every slot's B
    xc = x[:, :rank].to(y.dtype)
    if stacks(len(slots), rank, width):
        h = _mask(xc.repeat(1, len(slots)), plan, slots, 1)
        target.add_(h @ cache.b_side((lora_b,), (rank,), ((offset, width),), slots, y.dtype))
    else:  # grouped: each adapter's rows, no weight copy
        for slot, rows in plan.groups():
            if slot in slots:
                target.index_add_(0, rows, xc.index_select(0, rows) @ b[slot, :width, :rank].to(y.dtype).t())
