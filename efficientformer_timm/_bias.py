"""Relative-position attention bias that follows the real token grid.

EfficientFormer learns one bias per head for every absolute offset (|dy|, |dx|) on its pretraining grid
(7x7 for 224x224 input). Stored flat as ``attention_biases`` (heads, h0 * w0), it is a 2-D table over
offsets. At another grid the table is resized bicubically (antialiased, as timm does for LeViT / Swin bias
tables) to one entry per offset of the new grid, so the ImageNet-trained biases carry over; at the
pretraining grid the table is used unchanged.

The authors' detection / segmentation backbones use another scheme, available as ``use_fixed_grid_bias``: the
table is learned for one fixed grid (25 x 25 for 800-pixel detection inputs), and at every input size the whole
(heads, Nq0, N0) bias matrix is resized bicubically (no antialias) to the real (Nq, N).
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

__all__ = ['GridAttentionBias', 'antialiased_bicubic_weights', 'attention_logits', 'biased_attention',
           'explicit_attention', 'mix_heads', 'offset_table_bias', 'relative_offset_index', 'resize_offset_table',
           'tracing_or_compiling']

# From this many query x key pairs on, V1's attention on CUDA goes through scaled_dot_product_attention and its
# fused kernels. CPU's only fused SDPA kernel needs equal q / k / v head sizes (V1's are 32 / 32 / 128), so there
# SDPA runs its math path, which makes more passes over the (N, N) maps than the explicit form: CPU always uses the
# explicit form.
SDPA_MIN_PAIRS = 256 * 256

# On CPU, inference computes attention maps larger than twice this many bytes a block of query rows at a time: a
# block's maps stay in the caches from the logits through bias, talking heads and softmax to the product with the
# values, where whole maps (tens of MB at detection sizes) would make each of those passes through memory.
CPU_BLOCK_BYTES = 2 << 20
CPU_MIN_BLOCK_ROWS = 16  # fewer rows make the matrix products of a block inefficient

# V2's talking heads: the weight and bias of the 1x1 convolutions across heads before and after the softmax
TalkingHeads = Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor, Optional[torch.Tensor]]


def tracing_or_compiling() -> bool:
    """True inside torch.jit tracing, FX symbolic tracing, torch.compile and torch.export (ONNX): shapes there
    are symbolic. False in TorchScript, where shapes are real."""
    if not torch.jit.is_scripting():
        return torch.jit.is_tracing() or is_fx_symbolic_tracing() or torch.compiler.is_compiling()
    return False


def _compiling_not_exporting() -> bool:
    """True inside torch.compile, False in torch.export (ONNX), eager and TorchScript."""
    if not torch.jit.is_scripting():
        return torch.compiler.is_compiling() and not torch.compiler.is_exporting()
    return False


def mix_heads(attn: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """A 1x1 convolution (``weight``, ``bias``) across the heads of (B, heads, N, M) attention maps (V2's talking
    heads), as one batched matrix product with the bias added in the same kernel: PyTorch's CPU convolution takes
    its slow im2col path for these maps of few channels and many pixels."""
    B, heads, N, M = attn.shape
    weight = weight.reshape(1, heads, heads).expand(B, -1, -1)
    flat = attn.reshape(B, heads, N * M)
    mixed = torch.bmm(weight, flat) if bias is None else torch.baddbmm(bias.reshape(1, heads, 1), weight, flat)
    return mixed.reshape(B, heads, N, M)


def attention_logits(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor, scale: float) -> torch.Tensor:
    """q @ k^T * scale + bias. The (B, heads, Nq, Nk) maps are the large tensors on large grids: q is scaled
    instead, and the bias is added in place."""
    return ((q * scale) @ k.transpose(-2, -1)).add_(bias)


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float,
                       talking_heads: Optional[TalkingHeads] = None) -> torch.Tensor:
    """softmax(q @ k^T * scale + bias) @ v, the maps mixed across heads before and after the softmax by
    ``talking_heads`` when given; in blocks of query rows for large maps in eager CPU inference
    (``CPU_BLOCK_BYTES``). TorchScript, which cannot read the module's constants, and traced graphs compute whole
    maps."""
    if torch.jit.is_scripting():
        out = _attention_rows(q, k, v, bias, scale, talking_heads)
    else:  # TorchScript compiles no else branch of is_scripting()
        blocks = not tracing_or_compiling()
        out = (_attention_in_blocks if blocks else _attention_rows)(q, k, v, bias, scale, talking_heads)
    if talking_heads is not None:
        second_bias = talking_heads[3]
        if second_bias is not None:
            # the second head mix adds its bias to every weight of a head's map: to each output row, that bias times
            # the head's sum of values (a (B, heads, 1, d) term instead of a pass over the maps)
            out = out + second_bias.view(1, -1, 1, 1) * v.sum(dim=-2, keepdim=True)
    return out


def _attention_in_blocks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float,
                         talking_heads: Optional[TalkingHeads]) -> torch.Tensor:
    B, heads, Nq, _ = q.shape
    row_bytes = B * heads * k.shape[-2] * q.element_size()
    recording = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if q.device.type != 'cpu' or recording or Nq * row_bytes < 2 * CPU_BLOCK_BYTES:
        return _attention_rows(q, k, v, bias, scale, talking_heads)
    rows = max(CPU_MIN_BLOCK_ROWS, CPU_BLOCK_BYTES // row_bytes)
    # laid out once so that batch and heads fold into one batch of matrix products (a copy only where they do not,
    # as for several images of a channels_last V2 map): a block's product would otherwise copy all of k and v
    q, k, v = (t.reshape(B * heads, t.shape[2], t.shape[3]).view(t.shape) for t in (q, k, v))
    blocks = [_attention_rows(q[:, :, start:start + rows], k, v, bias[..., start:start + rows, :], scale,
                              talking_heads) for start in range(0, Nq, rows)]
    return torch.cat(blocks, dim=2)


def _records_gradient(param: torch.Tensor) -> bool:
    """Whether autograd records this forward for ``param``; always True in FX symbolic tracing (a graph for any
    use)."""
    if not torch.jit.is_scripting():
        if is_fx_symbolic_tracing():
            return True
    return torch.is_grad_enabled() and param.requires_grad


def _attention_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float,
                    talking_heads: Optional[TalkingHeads]) -> torch.Tensor:
    """The attention of queries ``q``; the second head mix's bias is left to the caller."""
    attn = attention_logits(q, k, bias, scale)
    if talking_heads is not None:
        # the first head mix's bias adds one constant to every row of a head's map, which the softmax takes out: it
        # is left out where no gradient is recorded for it (to autograd it stays a used parameter, as distributed
        # training wants)
        first_bias = talking_heads[1]
        if first_bias is not None and not _records_gradient(first_bias):
            first_bias = None
        attn = mix_heads(attn, talking_heads[0], first_bias)
    attn = attn.softmax(dim=-1)
    if talking_heads is not None:
        attn = mix_heads(attn, talking_heads[2], None)
    return attn @ v


def biased_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                     scale: float) -> torch.Tensor:
    """softmax(q @ k^T * scale + bias) @ v for (B, heads, N, dim) q, k, v and a (heads, Nq, Nk) bias. Large
    grids on CUDA use ``scaled_dot_product_attention``; traced / compiled graphs keep the explicit form."""
    pairs = q.shape[-2] * k.shape[-2]
    if torch.jit.is_scripting():
        use_sdpa = q.is_cuda and pairs >= 256 * 256  # SDPA_MIN_PAIRS: TorchScript cannot read module globals
    else:  # tracing first: FX proxies have no device to branch on
        use_sdpa = not tracing_or_compiling() and q.is_cuda and pairs >= SDPA_MIN_PAIRS
    if use_sdpa:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    return explicit_attention(q, k, v, bias, scale)


def antialiased_bicubic_weights(in_size: int, out_size: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """(out_size, in_size) float32 matrix of ``F.interpolate(mode='bicubic', antialias=True,
    align_corners=False)`` along one axis: Keys' cubic (a = -0.5) stretched by the downscale factor,
    rows normalised. Built from tensor ops only, so the resize exports to ONNX with a symbolic
    ``out_size`` (the exporter has no antialiased bicubic upsample)."""
    scale = torch.full((), in_size, dtype=torch.float32, device=device) / out_size
    centers = (torch.arange(out_size, dtype=torch.float32, device=device) + 0.5) * scale
    sources = torch.arange(in_size, dtype=torch.float32, device=device) + 0.5
    x = ((sources[None, :] - centers[:, None]) / scale.clamp(min=1.0)).abs()
    a = -0.5
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    weights = torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))
    return weights / weights.sum(1, keepdim=True)


def ceil_div(size: int, stride: int) -> int:
    """Output size of a stride-``stride`` step that rounds up (every strided conv here pads to keep the edge).
    No negation: torch.export cannot bound ``-(-size // stride)`` for a symbolic size."""
    return (size + stride - 1) // stride


def relative_offset_index(
        grid: Tuple[int, int], query_stride: int = 1, device: Optional[torch.device] = None) -> torch.Tensor:
    """Index into a flattened (H * W) offset table for queries on every ``query_stride``-th point of ``grid``.

    Returns a (Nq, H * W) long tensor with Nq = ceil(H / s) * ceil(W / s).
    """
    height, width = grid
    ky = torch.arange(height, device=device)
    kx = torch.arange(width, device=device)
    dy = (ky[::query_stride, None] - ky[None, :]).abs()  # (Qh, H)
    dx = (kx[::query_stride, None] - kx[None, :]).abs()  # (Qw, W)
    index = dy[:, None, :, None] * width + dx[None, :, None, :]  # (Qh, Qw, H, W)
    return index.reshape(dy.shape[0] * dx.shape[0], height * width)


def offset_table_bias(table: torch.Tensor, grid: Tuple[int, int], query_stride: int = 1) -> torch.Tensor:
    """The (heads, Nq, H * W) bias of a (heads, H * W) offset table for keys on ``grid`` and queries on every
    ``query_stride``-th point: ``table[:, relative_offset_index(grid, query_stride)]``, gathered in two steps with
    small indices. The columns first: ``by_column[h, dy, qx, kx] = table[h, dy, |qx - kx|]``; then the rows, whole
    rows of ``by_column`` at ``(|qy - ky|, qx)``. (One gather would build an Nq x N index, the size of the bias, in
    every run of a dynamic-size ONNX file.)"""
    height, width = grid
    heads = table.shape[0]
    ky = torch.arange(height, device=table.device)
    kx = torch.arange(width, device=table.device)
    dy = (ky[::query_stride, None] - ky[None, :]).abs()  # (Qh, H)
    dx = (kx[::query_stride, None] - kx[None, :]).abs()  # (Qw, W)
    queries_y, queries_x = dy.shape[0], dx.shape[0]
    # index_select (one ONNX Gather per step; advanced indexing exports as GatherND)
    by_column = table.reshape(heads, height, width).index_select(2, dx.flatten())  # (heads, H, Qw * W)
    rows = dy[:, None, :] * queries_x + torch.arange(queries_x, device=table.device)[None, :, None]  # (Qh, Qw, H)
    bias = by_column.reshape(heads, height * queries_x, width).index_select(1, rows.flatten())
    return bias.reshape(heads, queries_y * queries_x, height * width)


def resize_offset_table(table: torch.Tensor, from_size: Tuple[int, int], to_size: Tuple[int, int]) -> torch.Tensor:
    """A (heads, h0 * w0) offset table resized to (heads, h1 * w1): antialiased bicubic over the offsets."""
    rows = antialiased_bicubic_weights(from_size[0], to_size[0], device=table.device)
    cols = antialiased_bicubic_weights(from_size[1], to_size[1], device=table.device)
    table2d = table.reshape(-1, from_size[0], from_size[1]).float()
    # batched products of equal shapes, no broadcast: OpenVINO's CPU plugin runs no dynamic-shape MatMul that
    # broadcasts one operand over the heads
    heads = table2d.shape[0]
    rows, cols = rows.expand(heads, -1, -1), cols.T.expand(heads, -1, -1)
    return (rows @ table2d @ cols).to(table.dtype).flatten(1)


class GridAttentionBias(nn.Module):
    """Base for attention modules owning ``attention_biases`` over a (h0, w0) offset table.

    ``attention_bias(grid)`` gives the (heads, Nq, Nk) bias for keys on ``grid``. In eager eval it is cached
    per grid, device, dtype and parameter version (an in-place update such as ``load_state_dict`` invalidates
    it); in train, in TorchScript and while tracing or compiling it is recomputed (gradients reach the table).
    """
    attention_bias_cache: Dict[str, torch.Tensor]

    def _init_attention_bias(
            self, num_heads: int, table_size: Tuple[int, int], query_stride: int = 1,
            persistent_index: bool = True, device=None, dtype=None):
        self.table_size = tuple(table_size)
        self.query_stride = query_stride
        self.attention_biases = nn.Parameter(
            torch.zeros(num_heads, table_size[0] * table_size[1], device=device, dtype=dtype))
        # Kept (and for V1 saved) only so that timm checkpoints load strictly; the index is derived per grid.
        self.register_buffer(
            'attention_bias_idxs', relative_offset_index(table_size, query_stride, device=device),
            persistent=persistent_index)
        self.fixed_grid_bias = False
        self.attention_bias_cache = {}

    def use_fixed_grid_bias(self, side: int) -> None:
        """Switch to the authors' dense-prediction scheme for a ``side`` x ``side`` key grid. The table is resized
        to that grid (the authors start a new, zero table there; resizing keeps what ImageNet taught), and the
        index buffer follows it."""
        size = (side, side)
        with torch.no_grad():
            table = resize_offset_table(self.attention_biases.detach(), self.table_size, size)
        self.attention_biases = nn.Parameter(table, requires_grad=self.attention_biases.requires_grad)
        self.attention_bias_idxs = relative_offset_index(size, self.query_stride, device=table.device)
        self.table_size = size
        self.fixed_grid_bias = True
        self.attention_bias_cache = {}

    def set_query_stride(self, query_stride: int) -> None:
        """Queries on every ``query_stride``-th key position (V2's attention downsample; 1 when ``output_stride``
        turns its downsampling off). The table is unchanged; the index buffer (not saved for V2) follows."""
        self.query_stride = query_stride
        self.attention_bias_idxs = relative_offset_index(
            self.table_size, query_stride, device=self.attention_biases.device)
        self.attention_bias_cache = {}

    def train(self, mode: bool = True):
        super().train(mode)
        self.attention_bias_cache = {}
        return self

    def _apply(self, fn, *args, **kwargs):
        self.attention_bias_cache = {}
        return super()._apply(fn, *args, **kwargs)

    def _compute_attention_bias(self, grid: Tuple[int, int]) -> torch.Tensor:
        table = self.attention_biases
        if self.fixed_grid_bias:
            stride = self.query_stride
            queries = ceil_div(grid[0], stride) * ceil_div(grid[1], stride)
            matrix = table[:, self.attention_bias_idxs]
            return F.interpolate(matrix[None], size=(queries, grid[0] * grid[1]), mode='bicubic',
                                 align_corners=False)[0]
        # traced / exported graphs always resize (an exact identity at the table size) so that they stay
        # valid for every input size
        if tracing_or_compiling() or grid[0] != self.table_size[0] or grid[1] != self.table_size[1]:
            table = resize_offset_table(table, self.table_size, grid)
        if _compiling_not_exporting():  # inductor takes many minutes over the two-step gather's symbolic indices
            return table[:, relative_offset_index(grid, self.query_stride, device=table.device)]
        return offset_table_bias(table, grid, self.query_stride)

    def attention_bias(self, grid: Tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self._compute_attention_bias(grid).to(dtype)
        else:  # TorchScript compiles no else branch of is_scripting(): the cache (string keys) stays Python-only
            # the eval cache is detached: a forward that needs the table's gradient computes the bias afresh
            if self.training or tracing_or_compiling() or (
                    torch.is_grad_enabled() and self.attention_biases.requires_grad):
                return self._compute_attention_bias(grid).to(dtype)
            return self._cached_attention_bias(grid, dtype)

    def _cached_attention_bias(self, grid: Tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        version = self.attention_biases._version
        key = f'{grid[0]}x{grid[1]}/{self.attention_biases.device}/{dtype}/v{version}'
        bias = self.attention_bias_cache.get(key)
        if bias is None:
            with torch.no_grad():
                bias = self._compute_attention_bias(grid).to(dtype)
            # one entry per grid, device and dtype: drop those of older parameter versions
            suffix = f'/v{version}'
            self.attention_bias_cache = {k: v for k, v in self.attention_bias_cache.items() if k.endswith(suffix)}
            self.attention_bias_cache[key] = bias
        return bias

    def get_attention_biases(self, device: torch.device) -> torch.Tensor:
        """timm's API: the bias at the pretraining grid, on the table's device (cached in eval)."""
        return self.attention_bias(self.table_size, self.attention_biases.dtype)
