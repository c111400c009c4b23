import pytest
import torch

from trimkit.trimmers import (
    HeadTrimmer,
    TokenTrimmer,
    force_one_head,
    gather_tokens,
    gumbel_sigmoid_st,
    head_gate,
    select_topk_sorted,
    token_gate,
)


def test_stable_init_keeps_everything():
    torch.manual_seed(0)
    tok, head = TokenTrimmer(32, init_keep_logit=5.0), HeadTrimmer(32, 4, init_keep_logit=5.0)
    x, c1, c2 = torch.randn(3, 7, 32) * 10, torch.randn(3, 32) * 10, torch.randn(3, 32) * 10
    assert torch.equal(tok(x, c1, c2), torch.full((3, 7), 5.0))
    assert torch.equal(head(c1, c2), torch.full((3, 4), 5.0))
    assert torch.equal(token_gate(tok(x, c1, c2), training=False, tau=1.0, threshold=0.0), torch.ones(3, 7))
    assert torch.equal(head_gate(head(c1, c2), training=False, tau=1.0, threshold=0.0), torch.ones(3, 4))


def test_gumbel_st_is_hard_with_soft_gradient():
    torch.manual_seed(0)
    logits = torch.zeros(20000, requires_grad=True)
    gate = gumbel_sigmoid_st(logits, tau=1.0)
    assert set(gate.unique().tolist()) <= {0.0, 1.0}
    assert abs(gate.mean().item() - 0.5) < 0.02  # P(keep) = sigmoid(0)
    gate.sum().backward()
    assert (logits.grad > 0).all()


def test_gumbel_keep_rate_follows_sigmoid():
    torch.manual_seed(1)
    logits = torch.full((50000,), 1.5)
    rate = gumbel_sigmoid_st(logits, tau=1.0).mean().item()
    assert abs(rate - torch.sigmoid(torch.tensor(1.5)).item()) < 0.01


def test_cls_never_pruned_and_one_head_kept():
    logits = torch.full((4, 6), -9.0)
    for training in (False, True):
        assert torch.equal(token_gate(logits, training=training, tau=1.0, threshold=0.0)[:, 0], torch.ones(4))
        heads = head_gate(logits + torch.arange(6.0), training=training, tau=1.0, threshold=0.0)
        assert torch.equal(heads.sum(1), torch.ones(4))
        assert torch.equal(heads[:, 5], torch.ones(4))  # the highest logit is the one forced


def test_force_one_head_keeps_gradient_path():
    logits = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    gate = force_one_head(torch.sigmoid(logits), logits)
    assert gate[0, 0].item() == pytest.approx(1.0)
    gate.sum().backward()
    assert (logits.grad != 0).all()


def test_select_topk_sorted_filler_slots():
    keep = torch.tensor([[1, 0, 1, 1, 0, 1], [1, 0, 0, 0, 1, 0]], dtype=torch.bool)
    scores = torch.tensor([[9.0, 5, 1, 3, 2, 0], [9.0, 4, 3, 2, 1, 0]])
    idx, alive = select_topk_sorted(keep, scores)
    assert idx.shape == (2, 4)  # k = max(4, 2)
    assert torch.equal(idx[0], torch.tensor([0, 2, 3, 5]))
    assert torch.equal(idx[1][alive[1]], torch.tensor([0, 4]))  # its own two tokens, in order
    assert alive.sum(1).tolist() == [4, 2]
    assert (idx.diff(dim=1) > 0).all()  # ascending positions, distinct
    x = torch.arange(2 * 6 * 3, dtype=torch.float32).view(2, 6, 3)
    assert torch.equal(gather_tokens(x, idx)[0, 1], x[0, 2])


def test_local_only_ignores_cls():
    torch.manual_seed(0)
    tok = TokenTrimmer(16, local_only=True)
    with torch.no_grad():
        for p in tok.parameters():
            p.normal_()
    x = torch.randn(2, 5, 16)
    a = tok(x, torch.randn(2, 16), torch.randn(2, 16))
    b = tok(x, torch.randn(2, 16), torch.randn(2, 16))
    assert torch.equal(a, b)
    full = TokenTrimmer(16)
    with torch.no_grad():
        for p in full.parameters():
            p.normal_()
    assert not torch.equal(full(x, torch.randn(2, 16), torch.randn(2, 16)), full(x, torch.randn(2, 16), torch.randn(2, 16)))


def test_margin_terms_absolute_and_relative():
    from trimkit.trimmers import Decisions, margin_terms

    d = Decisions(distance=torch.tensor([[2.0, -0.5, 30.0, 1.0]]), decides=torch.tensor([[True, True, True, False]]),
                  scale=torch.tensor([[100.0, 1.0, 40.0, 5.0]]), trim_index=0, kind="tokens", modality=0)
    total, count = margin_terms([d], margin=1.0)  # only -0.5 sits within 1 logit: 1 - 0.5
    assert count == 3 and torch.isclose(total, torch.tensor(0.5))
    total, _ = margin_terms([d], margin=1.0, relative=0.1)  # widths 10, 1, 4: 1 - 2/10 and 1 - 0.5
    assert torch.isclose(total, torch.tensor(0.8 + 0.5))


def test_token_trimmer_scored_matches_forward():
    torch.manual_seed(0)
    for local_only in (False, True):
        t = TokenTrimmer(16, local_only=local_only)
        torch.nn.init.normal_(t.fc2.weight)
        if not local_only:
            torch.nn.init.normal_(t.cls_proj.weight)
        x, c = torch.randn(2, 5, 16), torch.randn(2, 16)
        logits, scale = t.scored(x, c, c)
        torch.testing.assert_close(logits, t(x, c, c))
        # the sum of |terms| of both dot products, written out
        h = torch.nn.functional.gelu(t.fc1(t.norm(x)))
        expected = (h * t.fc2.weight[0]).abs().sum(-1) + t.fc2.bias.abs()
        if not local_only:
            g = torch.cat([c, c], -1) @ t.cls_proj.weight.t() / t.proj_dim ** 0.5
            expected = expected + (t.proj(x) * g[:, None]).abs().sum(-1)
        torch.testing.assert_close(scale, expected.detach())
        assert (scale >= logits.abs() - 1e-5).all() and not scale.requires_grad
    head = HeadTrimmer(16, 4)
    torch.nn.init.normal_(head.fc.weight)
    logits, scale = head.scored(c, c)
    torch.testing.assert_close(logits, head(c, c))
    torch.testing.assert_close(scale, (torch.cat([c, c], -1)[:, None] * head.fc.weight).abs().sum(-1) + 5.0)
