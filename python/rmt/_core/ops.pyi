"""
Forward/backward pairs of every op, on numpy arrays (float32 or float64)
"""
from __future__ import annotations
import numpy
import numpy.typing
import typing
__all__: list[str] = ['adam_step', 'attention_backward', 'attention_forward', 'causal_mask', 'clip_grad_norm', 'clip_grad_value', 'cross_entropy_backward', 'cross_entropy_forward', 'dropout_backward', 'dropout_forward', 'embedding_backward', 'embedding_forward', 'gelu_backward', 'gelu_forward', 'grad_norm', 'layernorm_backward', 'layernorm_forward', 'linear_backward', 'linear_forward', 'masked_softmax_backward', 'masked_softmax_forward', 'padding_mask', 'rel_attention_backward', 'rel_attention_forward', 'rel_position_encoding', 'relu_backward', 'relu_forward', 'residual_add', 'rmt_decoder_mask']
def adam_step(param: typing.Any, grad: typing.Any, m: typing.Any, v: typing.Any, step: typing.SupportsInt | typing.SupportsIndex, lr: typing.SupportsFloat | typing.SupportsIndex, beta1: typing.SupportsFloat | typing.SupportsIndex = 0.9, beta2: typing.SupportsFloat | typing.SupportsIndex = 0.999, eps: typing.SupportsFloat | typing.SupportsIndex = 1e-08, weight_decay: typing.SupportsFloat | typing.SupportsIndex = 0.0, decoupled: bool = False) -> None:
    """
    One Adam (decoupled=False, L2 decay) or AdamW (decoupled=True) step as torch.optim; updates param, m and v in place; step is 1-based.
    """
def attention_backward(dout: typing.Any, q: typing.Any, k: typing.Any, v: typing.Any, probs: typing.Any, n_heads: typing.SupportsInt | typing.SupportsIndex, overwrite: bool = False) -> tuple:
    """
    (dq, dk, dv) of attention_forward. overwrite: they are written over NaN instead of accumulated into zeros (the engine's path for fresh buffers; the result is the same).
    """
def attention_forward(q: typing.Any, k: typing.Any, v: typing.Any, n_heads: typing.SupportsInt | typing.SupportsIndex, allowed: typing.Any = None) -> tuple:
    """
    (out (B, Tq, C), probs (B, NH, Tq, Tk)): softmax(q k^T / sqrt(hs) | allowed) v per head, heads interleaved along C; allowed (Tq, Tk) or (B, Tq, Tk), bool or uint8.
    """
def causal_mask(Tq: typing.SupportsInt | typing.SupportsIndex, cache: typing.SupportsInt | typing.SupportsIndex = 0, same_length_window: typing.SupportsInt | typing.SupportsIndex = 0) -> numpy.typing.NDArray[numpy.bool]:
    """
    bool (Tq, cache + Tq): query i sees key j iff j <= cache + i (and, with same_length_window = w > 0, j > cache + i - w).
    """
def clip_grad_norm(grad: typing.Any, max_norm: typing.SupportsFloat | typing.SupportsIndex) -> float:
    """
    Scales grad in place by max_norm / (norm + 1e-6) when that is below 1 (torch.nn.utils.clip_grad_norm_); returns the norm before clipping.
    """
def clip_grad_value(grad: typing.Any, clip_value: typing.SupportsFloat | typing.SupportsIndex) -> None:
    """
    Clamps grad in place to [-clip_value, clip_value].
    """
def cross_entropy_backward(dlosses: typing.Any, logits: typing.Any, lse: typing.Any, targets: typing.Any, weights: typing.Any = None, ignore_index: typing.SupportsInt | typing.SupportsIndex = -100) -> numpy.ndarray:
    """
    dlogits (N, V) = dlosses * weight * (softmax(logits) - onehot(target)), 0 on ignored rows.
    """
def cross_entropy_forward(logits: typing.Any, targets: typing.Any, weights: typing.Any = None, ignore_index: typing.SupportsInt | typing.SupportsIndex = -100) -> tuple:
    """
    (losses (N,), lse (N,), count): losses = weight * (logsumexp(logits) - logits[target]), 0 where target == ignore_index; count = rows with target != ignore_index and weight != 0.
    """
def dropout_backward(dout: typing.Any, keep: typing.Any, p: typing.SupportsFloat | typing.SupportsIndex) -> numpy.ndarray:
    """
    dx = dout * keep / (1 - p).
    """
def dropout_forward(x: typing.Any, p: typing.SupportsFloat | typing.SupportsIndex, seed: typing.SupportsInt | typing.SupportsIndex, offset: typing.SupportsInt | typing.SupportsIndex = 0) -> tuple:
    """
    (out, keep): inverted dropout; flat element i is kept iff uniform(hash(seed, offset + i)) >= p, whatever the thread count.
    """
def embedding_backward(dout: typing.Any, ids: typing.Any, vocab_size: typing.SupportsInt | typing.SupportsIndex, scale: typing.Any = None) -> numpy.ndarray:
    """
    dtable (vocab_size, C): dout scattered to the rows of ids, times scale.
    """
def embedding_forward(ids: typing.Any, table: typing.Any, scale: typing.Any = None) -> numpy.ndarray:
    """
    out[..., C] = table[ids] * scale (scale defaults to sqrt(C), as in Transformer-XL).
    """
def gelu_backward(dout: typing.Any, x: typing.Any, approximate: str = 'none', overwrite: bool = False) -> numpy.ndarray:
    """
    dx = dout * gelu'(x). overwrite: as layernorm_backward's.
    """
def gelu_forward(x: typing.Any, approximate: str = 'none') -> numpy.ndarray:
    """
    GELU, exact (erf) or approximate='tanh' as torch.nn.functional.gelu.
    """
def grad_norm(grad: typing.Any) -> float:
    """
    The L2 norm of grad (accumulated in float64).
    """
def layernorm_backward(dout: typing.Any, x: typing.Any, weight: typing.Any, mean: typing.Any, rstd: typing.Any, overwrite: bool = False) -> tuple:
    """
    (dx, dweight, dbias) of layernorm_forward, from its saved mean and rstd. overwrite: dx is written over NaN instead of accumulated into zeros (the engine's path for fresh buffers; the result is the same).
    """
def layernorm_forward(x: typing.Any, weight: typing.Any, bias: typing.Any, eps: typing.SupportsFloat | typing.SupportsIndex = 1e-05) -> tuple:
    """
    (out, mean, rstd): layer norm over the last dimension of x (..., C), biased variance.
    """
def linear_backward(dout: typing.Any, x: typing.Any, weight: typing.Any, bias: bool = True, overwrite_dx: bool = False) -> tuple:
    """
    (dx, dweight, dbias) of y = x @ weight.T + bias (dbias is None when bias=False). overwrite_dx: dx is written over a NaN-filled buffer instead of accumulated into zeros (the engine's path for fresh buffers; the result is the same).
    """
def linear_forward(x: typing.Any, weight: typing.Any, bias: typing.Any = None, relu: bool = False) -> numpy.ndarray:
    """
    y = x @ weight.T + bias; weight (out_features, in_features), x (..., in_features). relu=True: y = relu(x @ weight.T + bias) in the same pass (the feed-forward fc1 of the ReLU models).
    """
def masked_softmax_backward(dprobs: typing.Any, probs: typing.Any) -> numpy.ndarray:
    """
    dscores = probs * (dprobs - sum(dprobs * probs, -1)).
    """
def masked_softmax_forward(scores: typing.Any, allowed: typing.Any = None) -> numpy.ndarray:
    """
    probs (..., N): softmax over the last axis where allowed (bool/uint8 (R', N), row r of the flattened scores uses mask row r % R'); a row with nothing allowed is all zeros.
    """
def padding_mask(Tq: typing.SupportsInt | typing.SupportsIndex, Tk: typing.SupportsInt | typing.SupportsIndex, length: typing.SupportsInt | typing.SupportsIndex) -> numpy.typing.NDArray[numpy.bool]:
    """
    bool (Tq, Tk): key j visible to every query iff j < length.
    """
def rel_attention_backward(dout: typing.Any, q: typing.Any, k: typing.Any, v: typing.Any, rk: typing.Any, u_bias: typing.Any, v_bias: typing.Any, probs: typing.Any, n_heads: typing.SupportsInt | typing.SupportsIndex, overwrite: bool = False) -> tuple:
    """
    (dq, dk, dv, drk, du_bias, dv_bias) of rel_attention_forward. overwrite: as attention_backward's (dq, dk, dv only).
    """
def rel_attention_forward(q: typing.Any, k: typing.Any, v: typing.Any, rk: typing.Any, u_bias: typing.Any, v_bias: typing.Any, n_heads: typing.SupportsInt | typing.SupportsIndex, allowed: typing.Any = None) -> tuple:
    """
    Transformer-XL relative attention: q (B, Q, C) are the last Q of the K positions of k, v (B, K, C); rk (K, C) row r encodes distance K-1-r; returns (out (B, Q, C), probs (B, NH, Q, K)).
    """
def rel_position_encoding(K: typing.SupportsInt | typing.SupportsIndex, C: typing.SupportsInt | typing.SupportsIndex, clamp_len: typing.SupportsInt | typing.SupportsIndex = 0, dtype: typing.Any = ...) -> numpy.ndarray:
    """
    R (K, C): row r = [sin(p f) | cos(p f)], p = K-1-r (min with clamp_len if > 0), f_i = 1/10000^(2i/C).
    """
def relu_backward(dout: typing.Any, x: typing.Any, overwrite: bool = False) -> numpy.ndarray:
    """
    dx = dout * (x > 0). overwrite: as layernorm_backward's.
    """
def relu_forward(x: typing.Any) -> numpy.ndarray:
    """
    max(x, 0).
    """
def residual_add(y: typing.Any, x: typing.Any) -> numpy.ndarray:
    """
    y + x, as the layer's residual connections add (ops::add_inplace, split between the threads from 64 K elements).
    """
def rmt_decoder_mask(M: typing.SupportsInt | typing.SupportsIndex, T: typing.SupportsInt | typing.SupportsIndex, cache: typing.SupportsInt | typing.SupportsIndex = 0) -> numpy.typing.NDArray[numpy.bool]:
    """
    bool (2M + T, cache + 2M + T) over [cache; mem_read; x; mem_write]: read rows see the cache and the read block, token rows also their causal past, write rows everything.
    """
