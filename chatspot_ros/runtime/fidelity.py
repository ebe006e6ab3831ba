"""Does the runtime compute what the reference computes? A rule that holds in half precision.

In float32 the runtime's greedy ids equal HF ``generate``'s token for token (test_parity.py). In
fp16/bf16 a batched matmul rounds differently from an unbatched one, so where the reference's two
best tokens are nearly tied, a correct runtime can pick the other one, and from there the two
answers differ. A boolean "identical" cannot tell that from a bug. The rule here:

1. **Teacher-forced logits.** The runtime is fed the reference's own tokens (its decode loop, its
   cache, its batch) and its logits at every step are compared with the reference's logits for the
   same step: ``max_diff`` = the largest absolute logit difference over the reference sequence.
2. **Every greedy divergence classified.** A step where the runtime's free-running ids first differ
   from the reference's, or where its teacher-forced argmax differs from the reference token, is a
   *near-tie* when the reference's top-2 margin at that step is below ``2 * max_diff`` (the two
   computations disagree by at most max_diff per logit, so a margin under twice that can flip on
   rounding alone) and max_diff is within the budget below, and *real* otherwise.
3. **A noise budget.** A bug that shifts every logit (a position off by one, a wrong mask) makes
   ``max_diff`` large, which would let rule 2 call anything a near-tie. So ``max_diff`` must also
   stay within the dtype's rounding budget: ``budget = BUDGET_ULPS * eps(dtype) * max |reference
   logit|`` (relative to the logits' scale, since rounding error scales with the values). Above it
   the row is *diverged* whatever the ids.

A row is ``identical`` (same ids), ``near-tie`` (ids differ, every divergence a near-tie, max_diff
within budget) or ``diverged``. Only ``diverged`` is a failure (``chatspot-bench`` exits 1).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

VERDICTS = ("identical", "near-tie", "diverged")
# Rounding budget in units of the dtype's epsilon times the largest reference logit. Measured: a correct
# runtime stayed within 1.0 eps on the 2-layer shapes of test_fidelity.py (bf16, fp16, both loops) and at
# 5.5 eps on the tiny LLaVA in float32 (its own attention kernels against HF's sdpa); a decode position
# off by one gave 35-280 eps on a position-sensitive model. Not measured on a deep (32-layer) model on a
# GPU, where rounding accumulates further: chatspot-bench prints max_diff in these units, so a GPU run
# shows how close it comes.
BUDGET_ULPS = 16.0


@dataclass(frozen=True)
class Divergence:
    step: int  # index into the reference's generated tokens
    reference_token: int
    runtime_token: int
    margin: float  # the reference's top-1 minus top-2 logit at that step
    kind: str  # "near-tie" | "real"
    teacher_forced: bool  # found under teacher forcing (else: the free-running first divergence)


@dataclass(frozen=True)
class RowFidelity:
    verdict: str  # one of VERDICTS
    max_diff: float
    budget: float
    steps: int  # reference steps compared
    divergences: tuple[Divergence, ...] = field(default=())

    @property
    def real(self) -> int:
        return sum(d.kind == "real" for d in self.divergences)


# float32's own eps (1.2e-7) is far below what two correct float32 computations with different kernels
# differ by in units of it (5-11 eps on the tiny LLaVA); its budget uses this floor instead, still
# orders of magnitude below what a real bug moves (0.1-1 absolute on the planted off-by-one).
FLOAT32_EPS_FLOOR = 2.0 ** -16


def budget_for(dtype: torch.dtype, reference_logits: torch.Tensor) -> float:
    scale = float(reference_logits.abs().max()) if reference_logits.numel() else 1.0
    return BUDGET_ULPS * max(torch.finfo(dtype).eps, FLOAT32_EPS_FLOOR) * max(scale, 1.0)


def top2_margin(logits: torch.Tensor) -> torch.Tensor:
    """(T, V) -> (T,) top-1 minus top-2."""
    top = logits.float().topk(2, dim=-1).values
    return top[:, 0] - top[:, 1]


def compare_row(reference_ids: Sequence[int], reference_logits: torch.Tensor, runtime_ids: Sequence[int],
                forced_logits: torch.Tensor, dtype: torch.dtype) -> RowFidelity:
    """One row. reference_ids: the reference's greedy tokens (its eos included when it stopped there);
    reference_logits (T, V): the logits each was chosen from (T = len(reference_ids)); runtime_ids: the
    runtime's free-running greedy tokens (eos included likewise); forced_logits (>= T, V): the runtime's
    logits with the reference's tokens fed in."""
    ref = reference_logits.float()
    steps = ref.shape[0]
    if len(reference_ids) != steps:
        raise ValueError(f"{len(reference_ids)} reference tokens but {steps} reference logit rows")
    if forced_logits.shape[0] < steps:
        raise ValueError(f"teacher forcing gave {forced_logits.shape[0]} logit rows, the reference has {steps}")
    got = forced_logits[:steps].float()
    max_diff = float((got - ref).abs().max()) if steps else 0.0
    budget = budget_for(dtype, ref)
    margins = top2_margin(ref) if steps else torch.zeros(0)

    def classify(step: int, runtime_token: int, forced: bool) -> Divergence:
        margin = float(margins[step])
        rounding = margin < 2 * max_diff and max_diff <= budget
        return Divergence(step, int(reference_ids[step]), runtime_token, margin,
                          "near-tie" if rounding else "real", forced)

    found: dict[int, Divergence] = {}
    argmax = got.argmax(dim=-1).tolist() if steps else []
    for step, (want, have) in enumerate(zip(reference_ids, argmax)):
        if want != have:
            found[step] = classify(step, have, True)
    first = next((i for i, (a, b) in enumerate(zip(reference_ids, runtime_ids)) if a != b), None)
    if first is None and len(reference_ids) != len(runtime_ids):
        first = min(len(reference_ids), len(runtime_ids))
    if first is not None and first < steps and first not in found:
        runtime_token = int(runtime_ids[first]) if first < len(runtime_ids) else -1
        found[first] = classify(first, runtime_token, False)
    divergences = tuple(found[s] for s in sorted(found))
    same = list(reference_ids) == list(runtime_ids)
    if max_diff > budget or any(d.kind == "real" for d in divergences):
        verdict = "diverged"
    elif same:
        verdict = "identical"
    else:
        verdict = "near-tie"
    return RowFidelity(verdict, max_diff, budget, steps, divergences)


def summarize(rows: Sequence[RowFidelity]) -> dict[str, float | int]:
    """Counts per verdict, the largest max_diff and the smallest budget (for one report line)."""
    out: dict[str, float | int] = {v: sum(r.verdict == v for r in rows) for v in VERDICTS}
    out["max_diff"] = round(max((r.max_diff for r in rows), default=0.0), 5)
    out["budget"] = round(min((r.budget for r in rows), default=0.0), 5)
    out["max_diff_eps"] = round(max((r.max_diff / r.budget * BUDGET_ULPS for r in rows if r.budget), default=0.0), 3)
    out["real_divergences"] = sum(r.real for r in rows)
    return out


class ForcedTokens:
    """A ``select`` for the decode loops: records each step's logits (B, V) and feeds the reference's tokens.

    Rows whose reference is shorter than the longest get ``filler`` (never an eos) so that every row
    keeps decoding; their extra logits are ignored. ``forced`` rows of the batch, in order.
    """

    def __init__(self, forced: Sequence[Sequence[int]], filler: int) -> None:
        self.forced = [list(f) for f in forced]
        self.filler = filler
        self.logits: list[torch.Tensor] = []

    @property
    def steps(self) -> int:
        return max((len(f) for f in self.forced), default=0)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        t = len(self.logits)
        self.logits.append(logits.detach().float().cpu())
        rows = logits.shape[0]
        tokens = [self.forced[r][t] if r < len(self.forced) and t < len(self.forced[r]) else self.filler
                  for r in range(rows)]
        return torch.tensor(tokens, dtype=torch.long, device=logits.device)

    def row_logits(self, row: int) -> torch.Tensor:
        """(steps, V) of one row."""
        return torch.stack([step[row] for step in self.logits])


def teacher_forced_logits(lm: object, prefix_kv: object, prefix_len: int, suffixes: Sequence[Sequence[int]],
                          references: Sequence[Sequence[int]], decoder: object = None) -> list[torch.Tensor]:
    """The runtime's logits (len(reference), V) per row with the references' tokens fed in, through the
    same batch, cache and decode loop (``decoder``: a StaticDecoder, or None for the dynamic loop)."""
    from chatspot_ros.runtime.config import GenerationConfig
    from chatspot_ros.runtime.generation import generate_batch

    eos = lm.eos_token_ids  # type: ignore[attr-defined]
    forced = [[t for t in ref if t not in eos] for ref in references]  # an eos is only ever the last token
    filler = next(t for t in range(len(eos) + 1) if t not in eos)
    steps = max(1, max(len(r) for r in references))
    picker = ForcedTokens(forced, filler)
    generate_batch(lm, lambda ids: "", prefix_kv, prefix_len, suffixes,  # type: ignore[arg-type]
                   GenerationConfig(max_new_tokens=steps), decoder=decoder, select=picker)  # type: ignore[arg-type]
    return [picker.row_logits(i)[:len(references[i])] for i in range(len(suffixes))]
