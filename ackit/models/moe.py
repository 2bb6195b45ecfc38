"""A small but real MoE transformer: RMSNorm, causal SDPA attention, and an
expert-choice MoE (router gate, grouped experts, a shared expert).

Expert-choice routing keeps every shape static, so the model runs unchanged on
meta and fake tensors (for profiling) as well as on CPU and CUDA. Module names
follow torchtitan (`layers.N.attention.wq`, `layers.N.moe.router.gate`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class MoEArgs:
    vocab_size: int = 256
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_experts: int = 4
    expert_hidden: int = 96
    capacity_factor: float = 1.0
    router_bias: bool = False
    dropout: float = 0.0
    seq_len: int = 32
    batch_size: int = 2


SIZES = {
    "tiny": MoEArgs(),
    "small": MoEArgs(dim=128, n_layers=4, n_heads=4, n_experts=8, expert_hidden=192, seq_len=64),
    "medium": MoEArgs(dim=256, n_layers=4, n_heads=8, n_experts=8, expert_hidden=384, seq_len=128),
    # A realistic size for one GPU (about 660M parameters, run in bf16): where eager SAC turns CPU-bound.
    "gpu": MoEArgs(
        vocab_size=32768,
        dim=1024,
        n_layers=8,
        n_heads=16,
        n_experts=8,
        expert_hidden=2816,
        seq_len=2048,
        batch_size=8,
    ),
}


class Attention(nn.Module):
    def __init__(self, args: MoEArgs) -> None:
        super().__init__()
        self.n_heads = args.n_heads
        self.dropout = args.dropout
        self.wq = nn.Linear(args.dim, args.dim, bias=False)
        self.wk = nn.Linear(args.dim, args.dim, bias=False)
        self.wv = nn.Linear(args.dim, args.dim, bias=False)
        self.wo = nn.Linear(args.dim, args.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, dim = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, seq, self.n_heads, dim // self.n_heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            heads(self.wq(x)),
            heads(self.wk(x)),
            heads(self.wv(x)),
            is_causal=True,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.wo(out.transpose(1, 2).reshape(batch, seq, dim))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Router(nn.Module):
    def __init__(self, args: MoEArgs) -> None:
        super().__init__()
        self.gate = nn.Linear(args.dim, args.n_experts, bias=args.router_bias)

    def forward(self, tokens: torch.Tensor, capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each expert picks its top-`capacity` tokens: (weights, token ids), both (E, C)."""
        affinity = F.softmax(self.gate(tokens), dim=-1)
        return torch.topk(affinity.t(), capacity, dim=-1)


class GroupedExperts(nn.Module):
    """All experts' SwiGLU weights in three 3-D tensors, applied with bmm."""

    def __init__(self, args: MoEArgs) -> None:
        super().__init__()
        e, d, h = args.n_experts, args.dim, args.expert_hidden
        self.w1 = nn.Parameter(torch.randn(e, d, h) / d**0.5)
        self.w2 = nn.Parameter(torch.randn(e, h, d) / h**0.5)
        self.w3 = nn.Parameter(torch.randn(e, d, h) / d**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.bmm(F.silu(torch.bmm(x, self.w1)) * torch.bmm(x, self.w3), self.w2)


class MoE(nn.Module):
    def __init__(self, args: MoEArgs) -> None:
        super().__init__()
        self.capacity_factor = args.capacity_factor
        self.n_experts = args.n_experts
        self.router = Router(args)
        self.experts = GroupedExperts(args)
        self.shared_expert = FeedForward(args.dim, args.expert_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, dim = x.shape
        tokens = x.reshape(-1, dim)
        capacity = max(1, int(tokens.shape[0] * self.capacity_factor / self.n_experts))
        weights, token_ids = self.router(tokens, capacity)
        routed = self.experts(tokens[token_ids])
        combined = torch.zeros_like(tokens).index_add(
            0, token_ids.reshape(-1), (routed * weights.unsqueeze(-1)).reshape(-1, dim)
        )
        return (combined + self.shared_expert(tokens)).view(batch, seq, dim)


class TransformerBlock(nn.Module):
    def __init__(self, args: MoEArgs) -> None:
        super().__init__()
        self.attention_norm = nn.RMSNorm(args.dim)
        self.attention = Attention(args)
        self.ffn_norm = nn.RMSNorm(args.dim)
        self.moe = MoE(args)
        self.dropout = nn.Dropout(args.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.dropout(self.attention(self.attention_norm(x)))
        return h + self.dropout(self.moe(self.ffn_norm(h)))


class MoETransformer(nn.Module):
    def __init__(self, args: MoEArgs = MoEArgs()) -> None:
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleDict({str(i): TransformerBlock(args) for i in range(args.n_layers)})
        self.norm = nn.RMSNorm(args.dim)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.tok_embeddings(tokens)
        for block in self.layers.values():
            h = block(h)
        return self.output(self.norm(h))


def build(
    args: MoEArgs = MoEArgs(),
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> MoETransformer:
    """The same weights for the same seed, whatever the device."""
    torch.manual_seed(seed)
    return MoETransformer(args).to(device=device, dtype=dtype)


def batch(
    args: MoEArgs, seed: int = 1, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, next-token targets) drawn from a fixed seed."""
    generator = torch.Generator().manual_seed(seed)
    data = torch.randint(0, args.vocab_size, (args.batch_size, args.seq_len + 1), generator=generator)
    return data[:, :-1].to(device), data[:, 1:].to(device)


def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
