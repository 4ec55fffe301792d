"""The reference Qwen2 architecture as a compact, stacked module, and its HF checkpoints.

The architecture is Hugging Face's `Qwen2ForCausalLM` (pre-norm RMSNorm, RoPE, SwiGLU MLP,
q/k/v biases, untied head). `StackedQwen2` computes the same function with every parameter
stacked over a leading model dimension K: `K` independent models run in one batched forward
(`ids` [K, B, T] -> logits [K, B, T, V]) with exactly the per-model math, so several runs can
share one training step. K = 1 is a single run.

This module is the only implementation of the forward pass: training (`loss`), representation
extraction (`hidden(..., every_layer=True)`) and greedy decoding (`extend`, over a KV cache) all
run the same `Block`, `attention` and RoPE.

The HF module is used only at the edges: `to_hf_state_dict` / `load_hf_state_dict` convert
between the two layouts (q/k/v and gate/up are fused here, separate there), and `hf_config` /
`spec_from_hf_config` between a ModelSpec and a Qwen2 config. Checkpoints on disk (plain Qwen2
directories) and the names of a run's checkpoints are worldrep.checkpoints'.
"""

from __future__ import annotations

from typing import Literal

import pydantic
import torch
import torch.nn.functional as F
from torch import nn

from . import tokenizer
from .config import Strict
from .errors import WorldrepError
from .seeding import torch_seed

PRESETS: dict[str, dict[str, int]] = {
    "reference": dict(hidden=128, layers=6, heads=4, intermediate=512),
    "narrow": dict(hidden=64, layers=6, heads=2, intermediate=256),
    "wide": dict(hidden=256, layers=6, heads=8, intermediate=1024),
    "wider": dict(hidden=512, layers=6, heads=16, intermediate=2048),
    # The reference scaled down until a few hundred CPU steps take seconds.
    "tiny": dict(hidden=64, layers=2, heads=4, intermediate=256),
}
DIMS = ("hidden", "layers", "heads", "kv_heads", "intermediate")
# What makes two models the same function (init_scale only matters before training).
ARCH_FIELDS = DIMS + ("vocab", "max_positions", "rope_theta", "rms_eps")


class ModelSpec(Strict):
    """A preset name, optionally with sizes overridden, or a custom size (preset: null)."""

    preset: Literal["reference", "narrow", "wide", "wider", "tiny"] | None = "reference"
    hidden: int | None = pydantic.Field(None, gt=0)
    layers: int | None = pydantic.Field(None, gt=0)
    heads: int | None = pydantic.Field(None, gt=0)
    kv_heads: int | None = pydantic.Field(None, gt=0)  # default: heads (no GQA, as the reference)
    intermediate: int | None = pydantic.Field(None, gt=0)
    vocab: int = tokenizer.VOCAB_SIZE
    max_positions: int = pydantic.Field(256, gt=0)
    rope_theta: float = pydantic.Field(10000.0, gt=0)
    rms_eps: float = pydantic.Field(1e-6, gt=0)
    init_scale: float = pydantic.Field(0.1, gt=0)

    @pydantic.model_validator(mode="after")
    def _resolve(self) -> ModelSpec:
        base = PRESETS[self.preset] if self.preset else {}
        for name in ("hidden", "layers", "heads", "intermediate"):
            if getattr(self, name) is None:
                if name not in base:
                    raise ValueError(f"a custom model (preset: null) needs '{name}'; "
                                     f"set it or use a preset ({', '.join(PRESETS)})")
                setattr(self, name, base[name])
        if self.kv_heads is None:
            self.kv_heads = self.heads
        if self.vocab != tokenizer.VOCAB_SIZE:
            raise ValueError(f"vocab must be {tokenizer.VOCAB_SIZE} (the tokenizer's size)")
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        if self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be divisible by kv_heads "
                             f"({self.kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head size hidden/heads = {self.head_dim} must be even for RoPE")
        return self

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def arch(self) -> dict:
        return {k: getattr(self, k) for k in ARCH_FIELDS}

    @property
    def n_params(self) -> int:
        h, i, v, d = self.hidden, self.intermediate, self.vocab, self.head_dim
        qkv = (self.heads + 2 * self.kv_heads) * d
        block = 2 * h + qkv * h + qkv + h * self.heads * d + 3 * h * i
        return 2 * v * h + self.layers * block + h


# -- the compact stacked model --------------------------------------------------------------
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF Qwen2RMSNorm over the last dim; x [K, N, H], weight [K, H]."""
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight[:, None, :] * x.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + rotate_half(x) * sin


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
    """Per-model x @ W^T (+ b): x [K, N, in], weight [K, out, in] (HF layout), bias [K, out]."""
    if bias is None:
        return torch.bmm(x, weight.transpose(1, 2))
    return torch.baddbmm(bias[:, None, :], x, weight.transpose(1, 2))


def attention(q, k, v, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention of queries q [N, heads, L, D] over keys and values
    [N, kv heads, T, D], the queries being the last L of the T positions. Without `mask`
    (bool, True = may attend, broadcast to [N, 1, L, T]) attention is causal.

    One query per row (each step of greedy decoding) is the explicit product: for a single
    query the fused CPU kernel spends more on bookkeeping than on arithmetic. Under
    `torch.compile` on CPU it is the explicit product too (in fp32, as below), which inductor
    fuses with its neighbours: at these lengths the fused kernel's backward costs ~15 % of a
    compiled step. Eager CPU training keeps the fused kernel: PyTorch's eager softmax backward
    rounds differently with the number of threads, and a run must end with the same bytes
    whatever thread count its process had. On CPU attention runs in fp32 even under bf16
    autocast: the fused CPU backward is many times slower in bf16, and at these sizes
    attention costs little either way.
    """
    n, heads, length, dim = q.shape
    kv_heads, total = k.shape[1], k.shape[2]
    groups = heads // kv_heads
    if length == 1 or (q.device.type == "cpu" and torch.compiler.is_compiling()):
        dtype = v.dtype if length == 1 else torch.float32
        # query head h reads kv head h // groups: group the queries under their kv head
        q = q.to(dtype).reshape(n, kv_heads, groups * length, dim)
        scores = torch.matmul(q, k.to(dtype).transpose(-1, -2)) * dim ** -0.5
        scores = scores.view(n, kv_heads, groups, length, total)
        if mask is None and length > 1:  # causal; with an offset every earlier key is visible
            mask = torch.ones(length, total, dtype=torch.bool, device=q.device).tril(
                total - length)
        if mask is not None:  # [N or 1, 1, L, T] or [L, T]: the group axis broadcasts
            scores = scores.masked_fill(~(mask.unsqueeze(2) if mask.dim() == 4 else mask),
                                        float("-inf"))
        weights = scores.softmax(-1, dtype=torch.float32).to(dtype)
        y = torch.matmul(weights.view(n, kv_heads, groups * length, total), v.to(dtype))
        y = y.view(n, heads, length, dim)
        if length > 1 and torch.is_autocast_enabled("cpu"):
            y = y.to(torch.get_autocast_dtype("cpu"))
        return y
    if mask is None and length < total:  # causal, offset: every earlier key is visible
        mask = torch.ones(length, total, dtype=torch.bool, device=q.device).tril(total - length)
    extra = {"enable_gqa": True} if groups > 1 else {}
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask,
                                               is_causal=mask is None, **extra)
        return y.to(torch.get_autocast_dtype("cpu"))
    if q.dtype != v.dtype:  # autocast: rotated q/k are fp32, v is already bf16
        q, k = q.to(v.dtype), k.to(v.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                          **extra)


def counted_targets(ids: torch.Tensor, prompt_len: torch.Tensor | None = None,
                    first: int = 0) -> torch.Tensor:
    """Which next-token targets of right-padded rows ids [K, B, T] a loss counts (bool
    [K, B, T-1-first], targets `first`+1 .. T-1): every target that is not a pad (<bos> is
    never one: the reference's full-sequence loss), or with `prompt_len` [K, B] only the
    targets after the answer '=' (<eos> included). The one answer mask of worldrep: training
    and the training-time evaluation both ask it."""
    keep = ids[:, :, first + 1:] != tokenizer.PAD
    if prompt_len is not None:
        answer = torch.arange(first + 1, ids.shape[2], device=ids.device) >= prompt_len[..., None]
        keep = keep & answer
    return keep


class Block(nn.Module):
    def __init__(self, spec: ModelSpec, k: int):
        super().__init__()
        h, d = spec.hidden, spec.head_dim
        qkv = (spec.heads + 2 * spec.kv_heads) * d
        self.ln1 = nn.Parameter(torch.ones(k, h))
        self.qkv_w = nn.Parameter(torch.zeros(k, qkv, h))
        self.qkv_b = nn.Parameter(torch.zeros(k, qkv))
        self.o_w = nn.Parameter(torch.zeros(k, h, spec.heads * d))
        self.ln2 = nn.Parameter(torch.ones(k, h))
        self.gate_up_w = nn.Parameter(torch.zeros(k, 2 * spec.intermediate, h))
        self.down_w = nn.Parameter(torch.zeros(k, h, spec.intermediate))
        self.spec = spec

    def project(self, x, b: int, t: int, cos, sin):
        """q [K*B, heads, T, D] and k, v [K*B, kv heads, T, D] of x [K, B*T, H], RoPE applied."""
        s = self.spec
        k, d = x.shape[0], s.head_dim
        qkv = linear(rms_norm(x, self.ln1, s.rms_eps), self.qkv_w, self.qkv_b)
        qkv = qkv.view(k, b, t, s.heads + 2 * s.kv_heads, d).permute(0, 1, 3, 2, 4)
        q, kk, v = qkv.split([s.heads, s.kv_heads, s.kv_heads], dim=2)
        q, kk, v = (z.reshape(k * b, z.shape[2], t, d) for z in (q, kk, v))
        return rope(q, cos, sin), rope(kk, cos, sin), v

    def finish(self, x, y, b: int, t: int):
        """The residual stream after the block, from its input x and attention output y."""
        s, k = self.spec, x.shape[0]
        y = y.view(k, b, s.heads, t, s.head_dim).transpose(2, 3).reshape(k, b * t, -1)
        x = x + linear(y, self.o_w)
        gate, up = linear(rms_norm(x, self.ln2, s.rms_eps), self.gate_up_w).chunk(2, dim=-1)
        return x + linear(F.silu(gate) * up, self.down_w)

    def forward(self, x, b: int, t: int, cos, sin, mask, start: int = 0):
        """The residual stream after the block, [K, B*(T-start), H]: with `start`, only the
        positions from `start` on are computed (their queries still read every position's key
        and value), for a last block whose earlier positions nothing reads."""
        q, kk, v = self.project(x, b, t, cos, sin)
        if start:
            q, x, mask = self.from_position(start, q, x, mask, b, t)
        return self.finish(x, attention(q, kk, v, mask), b, t - start)

    @staticmethod
    def from_position(start: int, q, x, mask, b: int, t: int):
        """The queries q, residual stream x [K, B*T, H] -> [K, B*(T-start), H] and mask of the
        positions from `start` on: what a last block computes when nothing reads the earlier
        positions' outputs (their keys and values, already projected, still serve)."""
        k = x.shape[0]
        x = x.view(k, b, t, -1)[:, :, start:].reshape(k, b * (t - start), -1)
        return q[:, :, start:], x, None if mask is None else mask[..., start:, :]


class StackedQwen2(nn.Module):
    """K independent Qwen2 causal LMs with stacked parameters (leading dim K)."""

    def __init__(self, spec: ModelSpec, k: int = 1):
        super().__init__()
        self.spec, self.k = spec, k
        self.embed = nn.Parameter(torch.zeros(k, spec.vocab, spec.hidden))
        self.blocks = nn.ModuleList(Block(spec, k) for _ in range(spec.layers))
        self.norm = nn.Parameter(torch.ones(k, spec.hidden))
        self.lm_head = nn.Parameter(torch.zeros(k, spec.vocab, spec.hidden))
        d = spec.head_dim
        inv_freq = 1.0 / (spec.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float) / d))
        # RoPE's cos and sin of every position, computed once (HF computes the same values
        # per forward): a compiled step then reads them instead of evaluating cos and sin
        # again inside every kernel that rotates a query or a key.
        freqs = torch.arange(spec.max_positions, dtype=torch.float)[:, None] * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("rope_cos", emb.cos(), persistent=False)
        self.register_buffer("rope_sin", emb.sin(), persistent=False)

    def _rope(self, positions: torch.Tensor, dtype):
        """cos, sin of positions [T] -> [T, D], or of per-row positions [N, T] -> [N, 1, T, D]."""
        cos, sin = self.rope_cos[positions].to(dtype), self.rope_sin[positions].to(dtype)
        return (cos[:, None], sin[:, None]) if cos.dim() == 3 else (cos, sin)

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        """[K, B*T, H] embeddings of ids [K, B, T] (model k's ids look up model k's table)."""
        k, b, t = ids.shape
        if k != self.k:
            raise ValueError(f"ids has {k} models in its first dim, the model stacks {self.k}")
        offsets = torch.arange(k, device=ids.device)[:, None, None] * self.spec.vocab
        # reshape, not view: the optimizer may hold the stacked weights as strided views.
        table = self.embed.reshape(-1, self.spec.hidden)
        return F.embedding((ids + offsets).view(k, b * t), table)

    def hidden(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               positions: torch.Tensor | None = None, every_layer: bool = False,
               start: int = 0):
        """Final-norm hidden states [K, B, T, H] of ids [K, B, T]; with `every_layer`, the list
        HF calls hidden_states: the embeddings, the residual stream after each block, and last
        the final-norm output (in place of the last block's raw output). With `start`, the
        states of positions `start`..T-1 only, [K, B, T-start, H]: the last block skips the
        earlier positions' queries and MLP (training with the answer-only loss reads no
        earlier one; at the findings size that is ~19 % of a step's arithmetic).

        Without a mask, attention is causal and rows are right-padded (pads come after every
        real token, so they never change a real position). With `attention_mask` [K, B, T]
        (1 = token, 0 = pad, e.g. left padding), pads are hidden from every query and
        positions count real tokens only, unless `positions` [K, B, T] is given.
        """
        k, b, t = ids.shape
        x = self._embed(ids)
        mask = None
        if attention_mask is not None:
            real = attention_mask.bool().view(k * b, 1, 1, t)
            causal = torch.ones(t, t, dtype=torch.bool, device=ids.device).tril()
            # A pad query may see itself, so its (unused) row never turns into NaN.
            mask = (causal & real) | torch.eye(t, dtype=torch.bool, device=ids.device)
            if positions is None:
                positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        if positions is None:
            positions = torch.arange(t, device=ids.device)
        cos, sin = self._rope(positions.reshape(-1, t) if positions.dim() > 1 else positions,
                              x.dtype)
        if start and every_layer:
            raise ValueError("hidden: every_layer reads every position; start must be 0")
        states = [x]
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            states.append(block(states[-1], b, t, cos, sin, mask, start if i == last else 0))
        states[-1] = rms_norm(states[-1], self.norm, self.spec.rms_eps)
        states = [h.view(k, b, -1, h.shape[-1]) for h in states]
        return states if every_layer else states[-1]

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        h = self.hidden(ids, attention_mask, positions)
        k, b, t, _ = h.shape
        return linear(h.view(k, b * t, -1), self.lm_head).view(k, b, t, -1)

    @torch.no_grad()
    def extend(self, ids: torch.Tensor, keys: list, values: list, start: int, positions,
               mask: torch.Tensor | None = None, logits: bool = True) -> torch.Tensor | None:
        """Greedy decoding's forward (K = 1) over a KV cache: ids [B, S] are positions
        start..start+S-1 of cache rows 0..B-1. Writes their keys and values into `keys` /
        `values` (per layer [rows, kv heads, length, head dim]) and returns the logits [B, V]
        of each row's last position; with `logits=False` only the keys and values are wanted,
        and the last layer stops once it has written them.

        `positions` [S] (or [B, S] per row) are the RoPE positions; `mask` [B or 1, 1, S,
        start+S] (True = may attend) is needed unless every row sees all earlier keys and the
        new ones causally.
        """
        b, t = ids.shape
        x = self._embed(ids[None])
        cos, sin = self._rope(positions, x.dtype)
        end, last = start + t, len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            q, kk, v = block.project(x, b, t, cos, sin)
            keys[i][:b, :, start:end] = kk
            values[i][:b, :, start:end] = v
            if i == last:
                if not logits:
                    return None
                # Only the last position feeds the logits: skip the others' attention and MLP.
                q, x, mask = block.from_position(t - 1, q, x, mask, b, t)
                t = 1
            x = block.finish(x, attention(q, keys[i][:b, :, :end], values[i][:b, :, :end], mask),
                             b, t)
        return linear(rms_norm(x, self.norm, self.spec.rms_eps), self.lm_head)[0]

    def token_loss(self, ids: torch.Tensor, prompt_len: torch.Tensor | None = None,
                   first: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-token cross-entropy [K, B, T-1-first] of right-padded rows ids [K, B, T], and
        which positions count: every non-pad target after <bos> (the reference's full-sequence
        loss), or with `prompt_len` [K, B] only the targets after the answer '=' (<eos>
        included). Targets before `first` are left out (neither the last block's queries and
        MLP nor the LM head see their positions): a caller that knows no counted target lies
        there saves the work."""
        k = ids.shape[0]
        h = self.hidden(ids, start=first)[:, :, :-1]
        logits = linear(h.reshape(k, -1, h.shape[-1]), self.lm_head)
        targets = ids[:, :, first + 1:]
        ce = F.cross_entropy(logits.float().reshape(-1, self.spec.vocab), targets.reshape(-1),
                             reduction="none").view(targets.shape)
        return ce, counted_targets(ids, prompt_len, first)

    def loss(self, ids: torch.Tensor, prompt_len: torch.Tensor | None = None,
             first: int = 0) -> torch.Tensor:
        """Per-model mean token loss [K] (each model averages over its own counted tokens);
        `first` as in `token_loss`."""
        ce, keep = self.token_loss(ids, prompt_len, first)
        keep = keep.to(ce.dtype)
        return (ce * keep).sum((1, 2)) / keep.sum((1, 2)).clamp(min=1)


# -- HF names, init and conversion ----------------------------------------------------------
def hf_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Every parameter of Qwen2ForCausalLM by name, in the HF module's order."""
    h, i, v, d = spec.hidden, spec.intermediate, spec.vocab, spec.head_dim
    q, kv = spec.heads * d, spec.kv_heads * d
    shapes = {"model.embed_tokens.weight": (v, h)}
    for n in range(spec.layers):
        p = f"model.layers.{n}."
        shapes.update({
            p + "self_attn.q_proj.weight": (q, h), p + "self_attn.q_proj.bias": (q,),
            p + "self_attn.k_proj.weight": (kv, h), p + "self_attn.k_proj.bias": (kv,),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.v_proj.bias": (kv,),
            p + "self_attn.o_proj.weight": (h, q),
            p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h),
            p + "mlp.down_proj.weight": (h, i),
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
        })
    shapes["model.norm.weight"] = (h,)
    shapes["lm_head.weight"] = (v, h)
    return shapes


def init_state_dict(spec: ModelSpec, seed: int) -> dict[str, torch.Tensor]:
    """The reference init in HF names: every Linear and Embedding weight ~ N(0, init_scale^2),
    biases 0, norm weights 1, drawn in HF parameter order from a generator seeded by `seed`."""
    g = torch.Generator().manual_seed(torch_seed(seed, "model-init"))
    state = {}
    for name, shape in hf_shapes(spec).items():
        if name.endswith("norm.weight"):
            state[name] = torch.ones(shape)
        elif name.endswith(".bias"):
            state[name] = torch.zeros(shape)
        else:
            state[name] = torch.randn(shape, generator=g) * spec.init_scale
    return state


def _block_map(spec: ModelSpec, n: int, block: Block):
    """(hf name, compact parameter, slice of its per-model tensor) for one layer."""
    p = f"model.layers.{n}."
    q, kv, i = spec.heads * spec.head_dim, spec.kv_heads * spec.head_dim, spec.intermediate
    qs, ks, vs = slice(0, q), slice(q, q + kv), slice(q + kv, q + 2 * kv)
    return [
        (p + "input_layernorm.weight", block.ln1, slice(None)),
        (p + "self_attn.q_proj.weight", block.qkv_w, qs),
        (p + "self_attn.k_proj.weight", block.qkv_w, ks),
        (p + "self_attn.v_proj.weight", block.qkv_w, vs),
        (p + "self_attn.q_proj.bias", block.qkv_b, qs),
        (p + "self_attn.k_proj.bias", block.qkv_b, ks),
        (p + "self_attn.v_proj.bias", block.qkv_b, vs),
        (p + "self_attn.o_proj.weight", block.o_w, slice(None)),
        (p + "post_attention_layernorm.weight", block.ln2, slice(None)),
        (p + "mlp.gate_proj.weight", block.gate_up_w, slice(0, i)),
        (p + "mlp.up_proj.weight", block.gate_up_w, slice(i, 2 * i)),
        (p + "mlp.down_proj.weight", block.down_w, slice(None)),
    ]


def _name_map(model: StackedQwen2):
    pairs = [("model.embed_tokens.weight", model.embed, slice(None))]
    for n, block in enumerate(model.blocks):
        pairs += _block_map(model.spec, n, block)
    pairs += [("model.norm.weight", model.norm, slice(None)),
              ("lm_head.weight", model.lm_head, slice(None))]
    return pairs


def to_hf_state_dict(model: StackedQwen2, k: int = 0) -> dict[str, torch.Tensor]:
    """Model k's weights under Qwen2ForCausalLM's names (fp32, CPU, contiguous copies)."""
    return {name: param.detach()[k, part].float().cpu().contiguous()
            for name, param, part in _name_map(model)}


@torch.no_grad()
def load_hf_state_dict(model: StackedQwen2, state: dict[str, torch.Tensor], k: int = 0) -> None:
    """Copy Qwen2ForCausalLM weights (by HF name) into model slot k."""
    expected = hf_shapes(model.spec)
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise WorldrepError(f"weights do not fit the model {model.spec.arch()}: missing "
                            f"{missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected "
                            f"{extra[:3]}{'...' if len(extra) > 3 else ''}")
    for name, param, part in _name_map(model):
        value = state[name]
        if tuple(value.shape) != expected[name]:
            raise WorldrepError(f"weight {name} has shape {tuple(value.shape)}, the model needs "
                                f"{expected[name]}")
        param[k, part].copy_(value)


def init_model(spec: ModelSpec, seeds: list[int] | int, device=None) -> StackedQwen2:
    """A stacked model whose slot k holds the reference init drawn from seeds[k]."""
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    model = StackedQwen2(spec, k=len(seeds))
    for k, seed in enumerate(seeds):
        load_hf_state_dict(model, init_state_dict(spec, seed), k)
    return model.to(device) if device is not None else model


def from_hf(source, spec: ModelSpec | None = None) -> StackedQwen2:
    """A K=1 compact model from a Qwen2ForCausalLM module or a state dict (+ spec)."""
    if isinstance(source, nn.Module):
        spec = spec or spec_from_hf_config(source.config.to_dict())
        source = source.state_dict()
    if spec is None:
        raise WorldrepError("from_hf needs the model spec when given a bare state dict")
    model = StackedQwen2(spec, k=1)
    load_hf_state_dict(model, source)
    return model


def to_hf(model: StackedQwen2, k: int = 0):
    """Model k as a Qwen2ForCausalLM (fp32, eval mode, on the model's device)."""
    from transformers import Qwen2ForCausalLM

    hf = Qwen2ForCausalLM(hf_config(model.spec))
    hf.load_state_dict(to_hf_state_dict(model, k))
    return hf.to(model.embed.device).eval()


def stack(models: list[StackedQwen2]) -> StackedQwen2:
    """One stacked model holding the given models' slots in order (same architecture)."""
    spec = models[0].spec
    if any(m.spec.arch() != spec.arch() for m in models):
        raise WorldrepError("only models of one architecture can be stacked")
    out = StackedQwen2(spec, k=sum(m.k for m in models))
    with torch.no_grad():
        for dst, *srcs in zip(out.parameters(), *(m.parameters() for m in models), strict=True):
            dst.copy_(torch.cat([s.detach().cpu() for s in srcs]))
    return out


def select(model: StackedQwen2, k: int) -> StackedQwen2:
    """Slot k of a stacked model as a K=1 model (a copy, on the model's device)."""
    out = StackedQwen2(model.spec, k=1).to(model.embed.device)
    with torch.no_grad():
        for dst, src in zip(out.parameters(), model.parameters(), strict=True):
            dst.copy_(src.detach()[k:k + 1])
    return out


# -- HF checkpoints -------------------------------------------------------------------------
def hf_config(spec: ModelSpec):
    from transformers import Qwen2Config

    config = Qwen2Config(
        vocab_size=spec.vocab, hidden_size=spec.hidden, intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads, max_position_embeddings=spec.max_positions,
        rope_parameters={"rope_type": "default", "rope_theta": float(spec.rope_theta)},
        rms_norm_eps=spec.rms_eps, hidden_act="silu", tie_word_embeddings=False,
        initializer_range=spec.init_scale, pad_token_id=tokenizer.PAD,
        bos_token_id=tokenizer.BOS, eos_token_id=tokenizer.EOS)
    config.architectures = ["Qwen2ForCausalLM"]
    config.dtype = "float32"
    return config


def spec_from_hf_config(config: dict, where: str = "checkpoint") -> ModelSpec:
    """The ModelSpec of a Qwen2 config.json; options worldrep does not model are errors."""
    archs = config.get("architectures") or ["Qwen2ForCausalLM"]
    if config.get("model_type") != "qwen2" or archs != ["Qwen2ForCausalLM"]:
        raise WorldrepError(f"{where}: not a Qwen2ForCausalLM checkpoint (model_type "
                            f"{config.get('model_type')!r}, architectures {archs})")
    rope = config.get("rope_parameters") or {}
    rope_theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    unsupported = {
        "tie_word_embeddings": config.get("tie_word_embeddings", False),
        "use_sliding_window": config.get("use_sliding_window", False),
        "rope_type other than default": rope.get("rope_type", "default") != "default",
        "hidden_act other than silu": config.get("hidden_act", "silu") != "silu",
        "layers other than full attention": any(
            kind != "full_attention" for kind in config.get("layer_types") or []),
    }
    bad = [name for name, on in unsupported.items() if on]
    if bad:
        raise WorldrepError(f"{where}: unsupported Qwen2 options: {', '.join(bad)}")
    return ModelSpec(
        preset=None, hidden=config["hidden_size"], layers=config["num_hidden_layers"],
        heads=config["num_attention_heads"],
        kv_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
        intermediate=config["intermediate_size"], vocab=config["vocab_size"],
        max_positions=config["max_position_embeddings"], rope_theta=rope_theta,
        rms_eps=config.get("rms_norm_eps", 1e-6),
        init_scale=config.get("initializer_range", 0.1))


def describe(spec: ModelSpec) -> str:
    return (f"Qwen2 hidden {spec.hidden}, {spec.layers} layers, {spec.heads} heads "
            f"({spec.kv_heads} kv), MLP {spec.intermediate}: "
            f"{spec.n_params / 1e6:.2f}M parameters")
