"""
The vector kernels of the active ISA (or their scalar references), for tests
"""
from __future__ import annotations
import typing
__all__: list[str] = ['small_gemm', 'vec_adamw', 'vec_add_bias_rows', 'vec_add_rows', 'vec_axpy', 'vec_dot', 'vec_exp_shift_sum', 'vec_gelu', 'vec_gelu_backward', 'vec_layernorm_row', 'vec_layernorm_row_backward', 'vec_max', 'vec_relu_backward', 'vec_scale', 'vec_softmax', 'vec_transpose']
def small_gemm(a: typing.Any, b: typing.Any, c: typing.Any = None, alpha: typing.SupportsFloat | typing.SupportsIndex = 1.0, trans_a: bool = False, reference: bool = False) -> typing.Any:
    """
    Returns alpha * op(a) @ b (+ c when c is given; c is not modified), op(a) = a.T with trans_a: the unpacked GEMM of the attention heads.
    """
def vec_adamw(param: typing.Any, grad: typing.Any, m: typing.Any, v: typing.Any, lr: typing.SupportsFloat | typing.SupportsIndex, beta1: typing.SupportsFloat | typing.SupportsIndex, beta2: typing.SupportsFloat | typing.SupportsIndex, eps: typing.SupportsFloat | typing.SupportsIndex, weight_decay_factor: typing.SupportsFloat | typing.SupportsIndex, bias_correction1: typing.SupportsFloat | typing.SupportsIndex, bias_correction2_sqrt: typing.SupportsFloat | typing.SupportsIndex, reference: bool = False) -> typing.Any:
    """
    One AdamW step; returns the updated (param, m, v) as new arrays (inputs unchanged).
    """
def vec_add_bias_rows(x: typing.Any, cols: typing.SupportsInt | typing.SupportsIndex, bias: typing.Any, reference: bool = False) -> typing.Any:
    """
    Returns x[:, :cols] + bias (a new (rows, cols) array); x 2-D, bias (cols,).
    """
def vec_add_rows(x: typing.Any, cols: typing.SupportsInt | typing.SupportsIndex, y: typing.Any = None, sums: typing.Any = None, reference: bool = False) -> typing.Any:
    """
    On the first cols columns of x (rows, ldx): returns (y + x, sums + x's column sums), each None when not given; y (rows, ldy >= cols) and sums (cols,) are not modified.
    """
def vec_axpy(a: typing.SupportsFloat | typing.SupportsIndex, x: typing.Any, y: typing.Any, reference: bool = False) -> typing.Any:
    """
    Returns y + a * x (y is not modified).
    """
def vec_dot(x: typing.Any, y: typing.Any, reference: bool = False) -> typing.Any:
    """
    sum(x * y)
    """
def vec_exp_shift_sum(x: typing.Any, shift: typing.SupportsFloat | typing.SupportsIndex, reference: bool = False) -> typing.Any:
    """
    Returns (exp(x - shift), its sum).
    """
def vec_gelu(x: typing.Any, tanh_approximation: bool = False, reference: bool = False) -> typing.Any:
    """
    Returns gelu(x).
    """
def vec_gelu_backward(dinp: typing.Any, dout: typing.Any, x: typing.Any, tanh_approximation: bool = False, reference: bool = False) -> typing.Any:
    """
    Returns dinp + dout * gelu'(x) (dinp is not modified).
    """
def vec_layernorm_row(x: typing.Any, weight: typing.Any, bias: typing.Any, eps: typing.SupportsFloat | typing.SupportsIndex = 1e-05, reference: bool = False, in_place: bool = False) -> typing.Any:
    """
    Returns (LayerNorm of the row x, its mean, its 1 / sqrt(var + eps)). in_place: the kernel writes over a copy of x (out = x) instead of into a separate array.
    """
def vec_layernorm_row_backward(dx: typing.Any, dy: typing.Any, x: typing.Any, weight: typing.Any, mean: typing.SupportsFloat | typing.SupportsIndex, rstd: typing.SupportsFloat | typing.SupportsIndex, reference: bool = False) -> typing.Any:
    """
    Returns dx + the input gradient of one LayerNorm row (dx unchanged).
    """
def vec_max(x: typing.Any, reference: bool = False) -> typing.Any:
    """
    max(x); x must be non-empty.
    """
def vec_relu_backward(dinp: typing.Any, dout: typing.Any, x: typing.Any, reference: bool = False) -> typing.Any:
    """
    Returns dinp + dout * (x > 0) (dinp is not modified).
    """
def vec_scale(x: typing.Any, a: typing.SupportsFloat | typing.SupportsIndex, reference: bool = False) -> typing.Any:
    """
    Returns x * a.
    """
def vec_softmax(x: typing.Any, reference: bool = False, in_place: bool = False) -> typing.Any:
    """
    Returns softmax(x) over its last axis; x (n,) or (rows, n), non-empty. in_place: the kernel writes over a copy of x (out = in) instead of into a separate array.
    """
def vec_transpose(x: typing.Any, reference: bool = False) -> typing.Any:
    """
    Returns x.T (a new C-contiguous array); x 2-D.
    """
