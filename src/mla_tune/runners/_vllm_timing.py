"""Inputs, timing and numerics for the vLLM runner's worker: torch only, no vLLM internals.

Inputs are made once per (shape, dims, kv dtype, block size) from a seed, in the batch spec's request order:
``layers`` distinct paged latent KV caches with a shuffled block table, per-token queries, and the
``kv_b_proj`` weights. A config's request order (decode first, as vLLM reorders) is a permutation of those,
so every config sees the same numbers and outputs can be compared in spec order.

The decode part gets the query as vLLM's MLA layer hands it to ``forward_mqa``: the nope part absorbed into
the latent space through W_UK (``ql_nope``) plus ``q_pe``. The prefill part gets what ``forward_mha`` gets:
un-absorbed ``q``, the new tokens' latent ``kv_c`` and ``k_pe``. Both parts' outputs are brought to
[tokens, heads * v_head_dim] (the decode part through W_UV), so a request that moves between pipelines
when the reorder threshold changes still compares against the same reference.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..types import MLADims, Request
from ._timing_policy import SamplingPolicy, WarmupPolicy, enough_samples, stationary, warmup_done
from ._vllm_plan import block_counts, choose_layers

FP8_MAX = 448.0  # float8_e4m3fn
_CHUNK = 1 << 26  # elements per random-fill chunk: bounds the bf16 temporary of an fp8 cache


class KVBProj:
    """Stands in for MLA's ``kv_b_proj`` (a ColumnParallelLinear): a real bf16 GEMM, as the prefill path pays.

    ``weight`` is [heads * (qk_nope + v), kv_lora_rank]; calling it returns a 1-tuple like vLLM's linear layers.
    """

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (torch.nn.functional.linear(x, self.weight),)


def make_kv_b_proj(dims: MLADims, device: torch.device, seed: int) -> KVBProj:
    # Scaled so that k_nope and v have unit variance: attention logits stay O(1), softmax stays soft.
    g = torch.Generator(device=device).manual_seed(seed + 7919)
    rows = dims.num_q_heads * (dims.qk_nope_head_dim + dims.v_head_dim)
    w = torch.randn(rows, dims.kv_lora_rank, generator=g, device=device, dtype=torch.float32)
    return KVBProj((w * dims.kv_lora_rank ** -0.5).to(torch.bfloat16))


def _split_weight(w: torch.Tensor, dims: MLADims) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_UK [H, nope, L], W_UV [H, v, L]) views of the kv_b_proj weight."""
    w3 = w.view(dims.num_q_heads, dims.qk_nope_head_dim + dims.v_head_dim, dims.kv_lora_rank)
    return w3[:, : dims.qk_nope_head_dim], w3[:, dims.qk_nope_head_dim:]


def _random_fill(out: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Standard-normal values (not zeros: kernels and power behave differently on zeros), in chunks."""
    flat = out.view(-1)
    for start in range(0, flat.numel(), _CHUNK):
        stop = min(flat.numel(), start + _CHUNK)
        tmp = torch.randn(stop - start, generator=gen, device=out.device, dtype=torch.bfloat16)
        flat[start:stop].copy_(tmp.clamp_(-FP8_MAX, FP8_MAX) if out.dtype != torch.bfloat16 else tmp)
    return out


@dataclass
class Batch:
    """One config's view of the inputs: vLLM metadata plus the decode/prefill tensors in its request order."""

    meta: Any
    token_perm: torch.Tensor  # position in this batch -> token index in spec order
    num_decode_tokens: int
    num_prefill_tokens: int
    threshold: int = 0  # the reorder threshold its metadata was built with (engines are shared across batches)
    q_decode: Any = None  # (ql_nope, q_pe) or one fp8 tensor
    q_prefill: torch.Tensor | None = None
    kc_prefill: torch.Tensor | None = None
    kpe_prefill: torch.Tensor | None = None
    out_prefill: torch.Tensor | None = None


@dataclass
class Inputs:
    requests: tuple[Request, ...]
    dims: MLADims
    block_size: int
    caches: list[torch.Tensor]
    blocks: list[torch.Tensor]  # per request (spec order): its block ids, int32 on the CPU
    token_start: list[int]  # per request: first token index (spec order)
    q_nope: torch.Tensor  # [T, H, nope] bf16
    q_pe: torch.Tensor  # [T, H, rope] bf16
    k_c: torch.Tensor  # [T, L] bf16: the new tokens' latent KV (as stored in caches[0])
    k_pe: torch.Tensor  # [T, 1, rope] bf16
    batches: dict = field(default_factory=dict)

    @property
    def layers(self) -> int:
        return len(self.caches)

    @property
    def nbytes(self) -> int:
        return sum(c.numel() * c.element_size() for c in self.caches)

    def token_permutation(self, order: Sequence[int]) -> list[int]:
        return [self.token_start[i] + j for i in order for j in range(self.requests[i].q_len)]


def make_inputs(requests: Sequence[Request], dims: MLADims, block_size: int, cache_dtype: torch.dtype,
                device: torch.device, seed: int, max_layers: int, l2_factor: float,
                mem_fraction: float) -> Inputs:
    """Seeded inputs for a shape; the number of KV caches (layers) is chosen from L2 and free memory."""
    cpu = torch.Generator().manual_seed(seed)
    counts = block_counts(requests, block_size)
    perm = torch.randperm(sum(counts), generator=cpu).to(torch.int32)
    blocks = list(torch.split(perm, counts))
    shape = (sum(counts), block_size, dims.head_size)
    cache_bytes = shape[0] * shape[1] * shape[2] * torch.empty((), dtype=cache_dtype).element_size()
    free, _ = torch.cuda.mem_get_info(device)
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 << 20)
    layers = choose_layers(cache_bytes, l2, free, max_layers, l2_factor, mem_fraction)
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    caches = [_random_fill(torch.empty(shape, dtype=cache_dtype, device=device), gen) for _ in range(layers)]
    starts, slots = [], []
    for r, blk in zip(requests, blocks):
        starts.append(len(slots))
        pos = torch.arange(r.context_len, r.kv_len)
        slots.extend((blk[pos // block_size].long() * block_size + pos % block_size).tolist())
    total = len(slots)
    q_nope = torch.randn(total, dims.num_q_heads, dims.qk_nope_head_dim, generator=gen, device=device,
                         dtype=torch.bfloat16)
    q_pe = torch.randn(total, dims.num_q_heads, dims.qk_rope_head_dim, generator=gen, device=device,
                       dtype=torch.bfloat16)
    # The new tokens as the layer wrote them into the cache (dequantized for fp8 with scale 1).
    rows = caches[0].view(-1, dims.head_size)
    index = torch.tensor(slots, device=device)
    if rows.element_size() == 1:  # index fp8 as bytes: not every torch build indexes float8 tensors
        new = rows.view(torch.uint8)[index].view(cache_dtype).to(torch.bfloat16)
    else:
        new = rows[index].to(torch.bfloat16)
    return Inputs(tuple(requests), dims, block_size, caches, blocks, starts, q_nope, q_pe,
                  new[:, : dims.kv_lora_rank].contiguous(), new[:, dims.kv_lora_rank:].unsqueeze(1).contiguous())


def fill_batch(batch: Batch, inputs: Inputs, weight: torch.Tensor, fp8_query: torch.dtype | None) -> Batch:
    """The decode and prefill tensors of ``batch``, in its token order (outside any timed region)."""
    dims, td = inputs.dims, batch.num_decode_tokens
    dec, pre = batch.token_perm[:td], batch.token_perm[td:]
    w_uk, _ = _split_weight(weight, dims)
    if td:
        # ql_nope = q_nope @ W_UK per head, as MLAAttention.forward_impl does with W_UK_T before forward_mqa.
        ql = torch.bmm(inputs.q_nope[dec].transpose(0, 1), w_uk).transpose(0, 1).contiguous()
        q_pe = inputs.q_pe[dec].contiguous()
        batch.q_decode = ((torch.cat([ql, q_pe], dim=-1).clamp(-FP8_MAX, FP8_MAX).to(fp8_query))
                          if fp8_query is not None else (ql, q_pe))
    if batch.num_prefill_tokens:
        batch.q_prefill = torch.cat([inputs.q_nope[pre], inputs.q_pe[pre]], dim=-1).contiguous()
        batch.kc_prefill = inputs.k_c[pre].contiguous()
        batch.kpe_prefill = inputs.k_pe[pre].contiguous()
        batch.out_prefill = torch.empty(len(pre), dims.num_q_heads * dims.v_head_dim, dtype=torch.bfloat16,
                                        device=inputs.q_nope.device)
    return batch


def compose_output(batch: Batch, o_decode: torch.Tensor | None, inputs: Inputs,
                   weight: torch.Tensor) -> torch.Tensor:
    """The attention output [tokens, heads * v_head_dim] in fp32 and spec order, whichever pipeline ran."""
    dims, td = inputs.dims, batch.num_decode_tokens
    parts = []
    if td:
        _, w_uv = _split_weight(weight, dims)
        o = o_decode.reshape(td, dims.num_q_heads, dims.kv_lora_rank).float()
        parts.append(torch.einsum("thl,hvl->thv", o, w_uv.float()).reshape(td, -1))
    if batch.num_prefill_tokens:
        parts.append(batch.out_prefill.float())
    stacked = torch.cat(parts)
    out = torch.empty_like(stacked)
    out[batch.token_perm] = stacked
    return out


def relative_error(out: torch.Tensor, ref: torch.Tensor, rows: int = 4096) -> float:
    """||out - ref|| / ||ref|| over the whole output, fp32, with ``ref`` moved to the GPU in row chunks."""
    diff2 = torch.zeros((), dtype=torch.float64, device=out.device)
    ref2 = torch.zeros((), dtype=torch.float64, device=out.device)
    for start in range(0, out.shape[0], rows):
        a = out[start: start + rows]
        b = ref[start: start + rows].to(out.device, torch.float32)
        diff2 += (a - b).double().pow(2).sum()
        ref2 += b.double().pow(2).sum()
    return float((diff2.sqrt() / ref2.sqrt().clamp_min(1e-30)).item())


def store_reference(out: torch.Tensor, fp32_limit_bytes: int = 512 << 20) -> torch.Tensor:
    """A CPU copy of a reference output (bf16 when fp32 would be large: bf16 rounding is ~1e-3 relative)."""
    return out.cpu() if out.numel() * 4 <= fp32_limit_bytes else out.to(torch.bfloat16).cpu()


def warm_up(run: Callable[[], None], policy: WarmupPolicy) -> int:
    """Call ``run`` until JIT compiles and background builds are over and the minimum count and time have
    passed (see ``warmup_done``), or the budget is spent; returns the number of calls."""
    times: list[float] = []
    deadline = time.perf_counter() + policy.budget_s
    while True:
        t0 = time.perf_counter()
        run()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        if warmup_done(times, policy) or time.perf_counter() > deadline:
            return len(times)


@dataclass(frozen=True)
class Recording:
    """The kept samples (per-call ms), how often a drifting recording was re-taken, clock readings around it."""

    samples_ms: list[float]
    retakes: int
    readings: list[Any]


class GraphCaptureFailed(RuntimeError):
    """Raised when a CUDA graph cannot be captured; the worker treats the context as suspect."""


def sample(run: Callable[[], None], calls: int, graph: bool, policy: SamplingPolicy,
           read_clocks: Callable[[], Any] = lambda: None) -> Recording:
    """Per-call milliseconds: each sample times one ``run`` (``calls`` layer calls) with CUDA events.

    With ``graph`` the ``calls`` are captured once into a CUDA graph and each sample is one replay, as vLLM
    replays a full graph for a decode step; otherwise each sample launches them eagerly. Samples are taken until
    the policy's count and GPU time are reached; a recording whose first and last thirds disagree is re-taken
    (the drift was warm-up that had not ended), at most ``max_retakes`` times, and the last one is kept.
    """
    graph_obj = capture(run) if graph else None
    replay = graph_obj.replay if graph_obj is not None else run
    retakes = 0
    while True:
        readings = [read_clocks()]
        out: list[float] = []
        while not enough_samples(out, calls, policy):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            replay()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end) / calls)
        readings.append(read_clocks())
        if stationary(out, policy) or retakes >= policy.max_retakes:
            break
        retakes += 1
    del graph_obj
    return Recording(out, retakes, readings)


class CudaTimer:
    """``_interleave.Timer`` on CUDA events of the current stream."""

    def mark(self) -> torch.cuda.Event:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def elapsed_ms(self, start: torch.cuda.Event, stop: torch.cuda.Event) -> float:
        stop.synchronize()
        return float(start.elapsed_time(stop))

    def drain(self) -> None:
        torch.cuda.synchronize()


def capture(run: Callable[[], None]) -> torch.cuda.CUDAGraph:
    """``run`` captured into a CUDA graph and replayed once (each arm of a paired recording gets its own graph, as
    each gets its own metadata builder: graphs of one builder would share its persistent buffers)."""
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            run()
    except Exception as exc:
        raise GraphCaptureFailed(f"CUDA graph capture failed: {type(exc).__name__}: {exc}") from exc
    graph.replay()
    torch.cuda.synchronize()
    return graph
