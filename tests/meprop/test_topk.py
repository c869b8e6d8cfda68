"""TopKLinear: exact nn.Linear behaviour at k >= n, masked-gradient equivalence below."""
import pytest
import torch
import torch.nn as nn

from fairseq_efficiency.meprop import TopKLinear, parse_k, resolve_k


def _pair(k, mode="unified", n_in=12, n_out=10, seed=0):
    torch.manual_seed(seed)
    ref = nn.Linear(n_in, n_out)
    t = TopKLinear(n_in, n_out, k=k, mode=mode)
    with torch.no_grad():
        t.weight.copy_(ref.weight)
        t.bias.copy_(ref.bias)
    return ref, t


@pytest.mark.parametrize("k", [10, 25, 1.0])
def test_k_at_least_n_is_nn_linear_exactly(k):
    ref, t = _pair(k)
    x = torch.randn(3, 5, 12)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    gy = torch.randn(3, 5, 10)
    y1, y2 = ref(x1), t(x2)
    assert torch.equal(y1, y2)
    y1.backward(gy)
    y2.backward(gy)
    assert torch.equal(ref.weight.grad, t.weight.grad)
    assert torch.equal(ref.bias.grad, t.bias.grad)
    assert torch.equal(x1.grad, x2.grad)


def test_eval_mode_is_nn_linear_exactly():
    ref, t = _pair(2)
    t.eval()
    x = torch.randn(4, 12, requires_grad=True)
    assert torch.equal(ref(x), t(x))
    t(x).sum().backward()  # plain autograd in eval mode: dense gradient
    assert (t.weight.grad != 0).all()


def _masked_reference(ref, x, gy, mask):
    x = x.clone().requires_grad_()
    y = ref(x)
    y.register_hook(lambda g: g * mask)
    y.backward(gy)
    return x.grad, ref.weight.grad, ref.bias.grad


@pytest.mark.parametrize("shape", [(6,), (4, 3)])
def test_unified_equals_masked_dense_gradient(shape):
    ref, t = _pair(3)
    x = torch.randn(*shape, 12)
    gy = torch.randn(*shape, 10)
    idx = gy.reshape(-1, 10).abs().sum(0).topk(3).indices
    mask = torch.zeros(10)
    mask[idx] = 1
    gx_ref, gw_ref, gb_ref = _masked_reference(ref, x, gy, mask)
    x2 = x.clone().requires_grad_()
    t(x2).backward(gy)
    torch.testing.assert_close(x2.grad, gx_ref)
    torch.testing.assert_close(t.weight.grad, gw_ref)
    torch.testing.assert_close(t.bias.grad, gb_ref)
    assert int((t.weight.grad.abs().sum(1) > 0).sum()) == 3  # only k rows updated


def test_per_example_equals_manual_masked_computation():
    ref, t = _pair(4, mode="per-example")
    x = torch.randn(2, 5, 12)
    gy = torch.randn(2, 5, 10)
    G = gy.reshape(-1, 10)
    ind = G.abs().topk(4, dim=1).indices
    mask = torch.zeros_like(G).scatter_(1, ind, 1.0).view_as(gy)
    gx_ref, gw_ref, gb_ref = _masked_reference(ref, x, gy, mask)
    x2 = x.clone().requires_grad_()
    t(x2).backward(gy)
    torch.testing.assert_close(x2.grad, gx_ref)
    torch.testing.assert_close(t.weight.grad, gw_ref)
    torch.testing.assert_close(t.bias.grad, gb_ref)


def test_row_gradient_buffer_reuse_and_accumulation():
    """grad reset to None between steps (fairseq) and accumulation both stay exact."""
    ref, t = _pair(2)
    for step in range(3):
        x = torch.randn(5, 12)
        gy = torch.randn(5, 10)
        idx = gy.abs().sum(0).topk(2).indices
        mask = torch.zeros(10)
        mask[idx] = 1
        ref.zero_grad(set_to_none=True)
        _, gw_ref, _ = _masked_reference(ref, x, gy, mask)
        t.zero_grad(set_to_none=True)
        t(x).backward(gy)
        torch.testing.assert_close(t.weight.grad, gw_ref)
        t.weight.grad.mul_(0.5)  # in-place scaling keeps the zero rows zero
    # accumulation over two backward passes (gradient accumulation)
    t.zero_grad(set_to_none=True)
    ref.zero_grad(set_to_none=True)
    for _ in range(2):
        x = torch.randn(5, 12)
        gy = torch.randn(5, 10)
        idx = gy.abs().sum(0).topk(2).indices
        mask = torch.zeros(10)
        mask[idx] = 1
        _masked_reference(ref, x, gy, mask)
        t(x).backward(gy)
    torch.testing.assert_close(t.weight.grad, ref.weight.grad)


def test_gradient_to_non_leaf_weight_is_dense_and_correct():
    ref, t = _pair(3)
    scale = torch.tensor(2.0, requires_grad=True)
    x = torch.randn(4, 12)
    gy = torch.randn(4, 10)
    from fairseq_efficiency.meprop.topk import TopKLinearFunction, _RowGradBuffer
    w = t.weight * scale
    y = TopKLinearFunction.apply(x, w, t.bias, 3, "unified", t.stats, _RowGradBuffer(), _RowGradBuffer())
    y.backward(gy)
    idx = gy.abs().sum(0).topk(3).indices
    mask = torch.zeros(10)
    mask[idx] = 1
    expected = ((gy * mask).t() @ x * t.weight).sum()
    torch.testing.assert_close(scale.grad, expected)


def test_stats_record_top_k_history():
    _, t = _pair(2)
    t.stats.enabled = True
    gy = torch.zeros(3, 10)
    gy[:, 7] = 5.0
    gy[:, 1] = -4.0
    t(torch.randn(3, 12)).backward(gy)
    assert t.stats.seen == 1
    assert t.stats.counts[7] == 1 and t.stats.counts[1] == 1 and int(t.stats.counts.sum()) == 2


@pytest.mark.parametrize("k", [0, -3, 0.0, 1.5, -0.2, float("nan")])
def test_invalid_k_rejected(k):
    with pytest.raises(ValueError, match="k"):
        TopKLinear(4, 4, k=k)


def test_invalid_mode_rejected():
    with pytest.raises(ValueError, match="unknown meProp mode"):
        TopKLinear(4, 4, k=2, mode="row")


def test_k_resolution_and_cli_parsing():
    assert resolve_k(0.05, 1000) == 50 and resolve_k(0.001, 100) == 1 and resolve_k(64, 32) == 32
    assert parse_k(0.25) == 0.25 and parse_k(32.0) == 32 and isinstance(parse_k(32.0), int)
    for bad, msg in ((0, "--meprop-k must be > 0"), (-1, "--meprop-k must be > 0"),
                     (float("nan"), "--meprop-k must be > 0"), (2.5, "must be an integer")):
        with pytest.raises(ValueError, match=msg):
            parse_k(bad)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_unified_scores_of_half_gradients_do_not_saturate(dtype):
    """fp16/bf16 training: the batch sum of |dL/dy| (loss-scaled) can exceed fp16's 65504;
    accumulated in fp32 the scores stay finite and the right units are selected."""
    from fairseq_efficiency.meprop.topk import abs_batch_sum, unified_topk_indices
    g = torch.zeros(600, 4)
    g[:, :3] = torch.tensor([150.0, 200.0, 300.0])  # column sums 90k, 120k, 180k
    g[::2, 3] = 1.0
    g = g.to(dtype)
    score = abs_batch_sum(g)
    assert torch.isfinite(score).all()
    torch.testing.assert_close(score.double(), g.double().abs().sum(0), rtol=1e-3, atol=0)
    assert sorted(unified_topk_indices(g, 2).tolist()) == [1, 2]


@pytest.mark.parametrize("mode", ["unified", "per-example"])
def test_backward_under_autocast(mode):
    """fairseq --amp runs the model under torch.autocast; the sparse backward, which runs
    outside the autocast region, must see the dtypes of the forward (CPU autocast here,
    CUDA's is the same mechanism)."""
    ref, t = _pair(3, mode=mode)
    x = torch.randn(6, 12, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = t(x)
    assert y.dtype == torch.bfloat16
    y.float().pow(2).sum().backward()
    assert t.weight.grad.dtype == torch.float32 and x.grad.dtype == torch.float32
    assert torch.isfinite(t.weight.grad).all() and torch.isfinite(x.grad).all()
    if mode == "unified":
        assert int((t.weight.grad.abs().sum(1) > 0).sum()) == 3
    # the bf16 gradient is that of the dense fp32 layer masked to the kept outputs
    gy = 2 * ref(x.detach()).detach()
    keep = t.weight.grad.abs().sum(1) > 0 if mode == "unified" else None
    if keep is not None:
        torch.testing.assert_close(t.weight.grad[keep], (gy[:, keep].t() @ x.detach()),
                                   rtol=0.05, atol=0.05)
