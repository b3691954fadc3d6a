"""Checks shared by the op tests: float64 central differences and PyTorch parity."""
import numpy as np
import torch


def numerical_grad(loss_fn, x, eps=1e-6):
    """d loss_fn() / d x by central differences, perturbing x (float64) in place."""
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        plus = loss_fn()
        flat[i] = old - eps
        minus = loss_fn()
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * eps)
    return grad


def check_grads_fd(forward, backward, inputs, upstream, rtol=1e-5, atol=1e-7, eps=1e-6):
    """Checks an op's backward against float64 central differences.

    forward(*inputs) -> output (float64 array); backward(upstream, *inputs) -> tuple of grads,
    one per name in `inputs` (a dict name -> float64 array, in argument order). The scalar
    differentiated is sum(forward(...) * upstream)."""
    names = list(inputs)
    args = [inputs[n] for n in names]
    analytic = backward(upstream, *args)
    for name, arg, grad in zip(names, args, analytic):
        if grad is None:
            continue
        numeric = numerical_grad(lambda: float(np.sum(forward(*args) * upstream)), arg, eps)
        np.testing.assert_allclose(grad, numeric, rtol=rtol, atol=atol, err_msg=f"d/d{name}")


def torch_grads(fn, inputs, upstream):
    """Forward and gradients of fn on torch copies of `inputs` (numpy arrays), for upstream."""
    tensors = [torch.tensor(a, requires_grad=np.issubdtype(a.dtype, np.floating)) for a in inputs]
    out = fn(*tensors)
    out.backward(torch.tensor(upstream))
    grads = [t.grad.numpy() if t.grad is not None else None for t in tensors]
    return out.detach().numpy(), grads


def assert_close(ours, theirs, rtol=1e-4, atol=1e-5, what=""):
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=atol, err_msg=what)
