"""Study B: PGD-AT vs TRADES vs GKL-AT on real Fashion-MNIST (Linf eps 0.1), small and fast.

    python scripts/experiments/study_b_fashion_mnist.py            # the whole study, then the report
    python scripts/experiments/study_b_fashion_mnist.py --dry-run  # print every command, run nothing

Trains configs/exp/study_fmnist_{pgdat,trades,gkl,gkl_loss}.yaml with seeds 0 and 1, evaluates each `last.pt`
with PGD-20 (first 1,000 test images) and AutoAttack standard (first 300 test images) at eps
0.1, and writes results/study_b_fashion_mnist/. Rerunning skips finished work (docs/studies.md).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from common import EvalSpec, Method, Study, run_study
from report import write_report

AA_EXAMPLES = 300

SCALING = f"""
Fashion-MNIST (real data, 1×28×28), L∞ eps 0.1. Same design as study A, smaller: the configs
`configs/exp/study_fmnist_{{pgdat,trades,gkl}}.yaml` inherit study A's and change only the dataset, the
width, the epochs and the attack radius. The ablation arm **GKL loss only** (`study_fmnist_gkl_loss`) trains
the GKL loss under exactly the TRADES arm's recipe (constant eps 0.1 from epoch 1, 5 steps of 0.05, lr 0.1
with ×0.1 from epochs 6 and 8, no AWP, no averaging), as in study A.

| | this study | how it was scaled |
|---|---|---|
| model | `small_cnn` width 8 (≈19k parameters) | smaller than study A: Fashion-MNIST is easier and AutoAttack cost grows with the robust points, which are many here |
| training data | first 10,000 training images (1,024 held out for validation), batch 128, crop + flip | |
| epochs | 8 for all | |
| attack | eps 0.1; 5 steps of 0.05 (2.5 eps/steps) for PGD-AT and TRADES; GKL 5 × eps_t/2 with eps_t = 0.1 · t/8 | as study A |
| lr schedules | as study A (fractions of the run) | |
| GKL | alpha 4, beta 20, gamma 1, T 4; AWP 0.005 from epoch 1 (5% of 8 epochs); iteration EMA decay 1 − 1/(0.05 · 8 · 79) = 0.9684 | as study A |
| TRADES | beta 6 | |
| test | PGD-20 on the first 1,000 test images; AutoAttack standard on the first {AA_EXAMPLES:,} | AutoAttack's cost grows with the robust points (54 of 100 test images for a 3-epoch model in the cost measurement, docs/studies.md), so it gets fewer images than PGD-20 |
""".strip()

STUDY = Study(
    name="study_b_fashion_mnist",
    title="Study B: PGD-AT vs TRADES vs GKL-AT on Fashion-MNIST (eps 0.1) at CPU scale",
    dataset="fashion_mnist",
    methods=(
        Method("PGD-AT", "pgdat", "study_fmnist_pgdat", relative_cost=0.55),
        Method("TRADES", "trades", "study_fmnist_trades", relative_cost=0.8),
        Method("GKL", "gkl", "study_fmnist_gkl", relative_cost=1.0),
        Method("GKL loss only", "gkl_loss", "study_fmnist_gkl_loss", relative_cost=0.82),
    ),
    seeds=(0, 1),
    evals=(
        EvalSpec("pgd20", "PGD-20", ("eval=pgd20", "eval.eps=0.1", "n_examples=1000")),
        EvalSpec(
            "aa", "AutoAttack", ("eval=aa_standard", "eval.eps=0.1", f"n_examples={AA_EXAMPLES}")
        ),
    ),
    scaling=SCALING,
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run (or resume) the study and write its report; the exit code is 1 if any job failed."""
    return run_study(STUDY, argv, write_report=write_report)


if __name__ == "__main__":
    sys.exit(main())
