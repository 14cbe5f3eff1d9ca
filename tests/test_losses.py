"""Losses against independent references written from the published formulas (float64, <= 1e-6)."""

import pytest
import torch

from losses import AsymmetricLoss, BCELoss, FocalLoss

torch.set_default_dtype(torch.float32)


def sigmoid(x):
    return 1.0 / (1.0 + torch.exp(-x))


def reference_bce(x, y, pos_weight=None):
    # -[w·y·log σ(x) + (1−y)·log(1−σ(x))], log σ written stably as −softplus(−x)
    log_p = -torch.nn.functional.softplus(-x)
    log_not_p = -torch.nn.functional.softplus(x)
    w = 1.0 if pos_weight is None else pos_weight
    return -(w * y * log_p + (1 - y) * log_not_p)


def reference_focal(x, y, alpha, gamma):
    # torchvision.ops.sigmoid_focal_loss (Lin et al., 2017)
    p = sigmoid(x)
    p_t = p * y + (1 - p) * (1 - y)
    loss = reference_bce(x, y) * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * y + (1 - alpha) * (1 - y)) * loss
    return loss


def reference_asl_paper(x, y, gamma_neg, gamma_pos, clip, eps):
    # Ridnik et al. 2021, eq. 2-4, hard labels: L+ = (1−p)^γ+ log p, L− = p_m^γ− log(1−p_m), p_m = max(p−m, 0)
    p = sigmoid(x)
    p_m = torch.clamp(p - clip, min=0)
    l_pos = (1 - p) ** gamma_pos * torch.log(torch.clamp(p, min=eps))
    l_neg = p_m**gamma_neg * torch.log(torch.clamp(1 - p_m, min=eps))
    return -(y * l_pos + (1 - y) * l_neg)


def reference_asl_code(x, y, gamma_neg, gamma_pos, clip, eps, detach_weight=False):
    # Alibaba-MIIL AsymmetricLoss.forward, transcribed for soft targets y
    xs_pos = sigmoid(x)
    xs_neg = torch.clamp(1 - xs_pos + clip, max=1)
    loss = y * torch.log(torch.clamp(xs_pos, min=eps)) + (1 - y) * torch.log(torch.clamp(xs_neg, min=eps))
    pt = xs_pos * y + xs_neg * (1 - y)
    weight = torch.pow(1 - pt, gamma_pos * y + gamma_neg * (1 - y))
    return -(loss * (weight.detach() if detach_weight else weight))


def smoothed(y, eps):
    return y * (1 - eps) + eps / 2


def random_inputs(seed, n=16, scale=4.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g, dtype=torch.float64) * scale
    x[0, :4] = torch.tensor([50.0, -50.0, 50.0, -50.0], dtype=torch.float64)  # extreme logits, both labels
    y = (torch.rand(n, 8, generator=g, dtype=torch.float64) < 0.3).to(torch.float64)
    y[0, :4] = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    return x, y


def compare(module, reference_fn, seed):
    x, y = random_inputs(seed)
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    ours = module(x1, y)
    ref = reference_fn(x2, y)
    assert ours.shape == (16, 8) and torch.isfinite(ours).all() and (ours >= 0).all()
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    ours.sum().backward()
    ref.sum().backward()
    assert torch.isfinite(x1.grad).all()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("with_pos_weight", [False, True])
def test_bce(seed, smoothing, with_pos_weight):
    pos_weight = (
        torch.tensor([1.0, 2.0, 5.0, 0.5, 3.0, 10.0, 4.0, 1.5], dtype=torch.float64) if with_pos_weight else None
    )
    module = BCELoss(reduction="none", label_smoothing=smoothing, pos_weight=pos_weight)
    compare(module.double(), lambda x, y: reference_bce(x, smoothed(y, smoothing), pos_weight), seed)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (-1.0, 2.0), (0.5, 0.0), (0.75, 3.5), (0.25, 1.0)])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_focal(seed, alpha, gamma, smoothing):
    module = FocalLoss(alpha=alpha, gamma=gamma, reduction="none", label_smoothing=smoothing)
    compare(module, lambda x, y: reference_focal(x, smoothed(y, smoothing), alpha, gamma), seed)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(
    "gamma_neg, gamma_pos, clip", [(4.0, 1.0, 0.05), (2.0, 0.0, 0.0), (0.0, 0.0, 0.1), (3.0, 2.0, 0.2)]
)
def test_asl_matches_the_paper_on_hard_labels(seed, gamma_neg, gamma_pos, clip):
    module = AsymmetricLoss(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, eps=1e-8, reduction="none")
    compare(module, lambda x, y: reference_asl_paper(x, y, gamma_neg, gamma_pos, clip, 1e-8), seed)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("detach", [False, True])
def test_asl_matches_the_reference_code_with_smoothing_and_detached_weight(seed, smoothing, detach):
    module = AsymmetricLoss(disable_torch_grad_focal_loss=detach, reduction="none", label_smoothing=smoothing)
    compare(module, lambda x, y: reference_asl_code(x, smoothed(y, smoothing), 4.0, 1.0, 0.05, 1e-8, detach), seed)


def test_asl_differs_from_the_reference_pipelines_eps_inside_the_log():
    """The reference pipeline's "ASL" used log(p + eps); the published one clamps: they differ for tiny p."""
    x = torch.tensor([[-18.5] * 8], dtype=torch.float64)  # p ≈ 9e-9, the size of eps
    y = torch.ones(1, 8, dtype=torch.float64)
    ours = AsymmetricLoss(reduction="none")(x, y)
    eps_in_log = -((1 - sigmoid(x)) ** 1.0) * torch.log(sigmoid(x) + 1e-8)
    assert not torch.allclose(ours, eps_in_log)


@pytest.mark.parametrize("module", [BCELoss(), FocalLoss(), AsymmetricLoss()], ids=["bce", "focal", "asl"])
def test_reductions(module):
    x, y = random_inputs(3)
    none = type(module)(reduction="none")(x, y)
    torch.testing.assert_close(type(module)(reduction="mean")(x, y), none.mean())
    torch.testing.assert_close(type(module)(reduction="sum")(x, y), none.sum())


def test_asl_without_grad_focus_does_not_touch_global_grad_mode():
    module = AsymmetricLoss(disable_torch_grad_focal_loss=True)
    x, y = random_inputs(4)
    with torch.no_grad():
        loss = module(x.requires_grad_(True), y)
        assert not torch.is_grad_enabled()  # the reference implementation turns it back on here
    assert not loss.requires_grad
    assert torch.is_grad_enabled()


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: FocalLoss(gamma=-1), "gamma must be >= 0"),
        (lambda: AsymmetricLoss(gamma_neg=-2), "gamma_neg and gamma_pos must be >= 0"),
        (lambda: AsymmetricLoss(clip=1.5), "clip must be in"),
        (lambda: BCELoss(reduction="avg"), "reduction must be one of"),
        (lambda: BCELoss(label_smoothing=1.0), "label_smoothing must be in"),
    ],
)
def test_bad_parameters_are_refused(build, message):
    with pytest.raises(ValueError, match=message):
        build()
