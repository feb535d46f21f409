"""Study A: PGD-AT vs TRADES vs GKL-AT (+ the GKL loss alone) on real CIFAR-10 at CPU scale (docs/studies.md).

    python scripts/experiments/study_a_cifar10.py            # the whole study, then the report
    python scripts/experiments/study_a_cifar10.py --dry-run  # print every command, run nothing

Trains configs/exp/study_cifar10_{pgdat,trades,gkl,gkl_loss}.yaml with seeds 0 and 1, then evaluates each
`last.pt` with PGD-20 and AutoAttack (standard) on the first 1,000 test images at eps 8/255, and
writes results/study_a_cifar10/. Rerunning skips finished work and resumes unfinished runs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from common import EvalSpec, Method, Study, run_study
from report import write_report

SCALING = """
CIFAR-10 (real data), L∞ eps 8/255. The three methods share the model, data, epochs and attack steps;
each keeps the rest of its published recipe. Configs: `configs/exp/study_cifar10_{pgdat,trades,gkl}.yaml`
(each inherits the full-scale `exp/cifar10_*` file and says what it changes). A fourth arm, **GKL loss
only** (`study_cifar10_gkl_loss`), is an ablation: the GKL loss (alpha 4, beta 20, gamma 1, T 4) trained
under exactly the TRADES arm's recipe (constant eps 8/255 from epoch 1, 5 steps of 4/255, lr 0.1 with
×0.1 from epochs 8 and 9, wd 2e-4, no AWP, no averaging), so that GKL's loss can be told from its recipe
(eps ramp, AWP, averaging, cosine lr).

| | paper setting | this study | how it was scaled |
|---|---|---|---|
| model | PreActResNet-18 / WRN-34-10 | `small_cnn` width 12 (≈41k parameters), dataset normalisation inside | sized so 8 trainings + AutoAttack on 1,000 images fit a few hours on 2 CPU cores (docs/studies.md) |
| training data | 50,000 images | first 10,000 training images (1,024 held out for validation), batch 128, crop + flip | |
| epochs | 200 (PGD-AT, GKL), 76 (TRADES script default) | 10 for all | |
| attack steps | 10 × 2/255 (PGD-AT, TRADES), 5 × eps_t/2 (GKL) | 5 for all: 5 × 4/255 (= 2.5 eps/steps, Madry's rule) for PGD-AT and TRADES; GKL keeps 5 × eps_t/2 | same step count for all |
| attack mode | PGD-AT train mode (Rice et al.'s script), TRADES and GKL eval mode | unchanged | each method's own script |
| lr schedule | PGD-AT 0.1, ×0.1 from epochs 101/151 of 200; TRADES 0.1, ×0.1 from epochs 75/90 (of the 100 its schedule is written for); GKL 0.2 `cosine_official` | the same milestones as fractions of the run (0.505/0.755: ×0.1 from epochs 6 and 8; 0.75/0.9: from epochs 8 and 9); GKL's cosine over 10 epochs | proportional |
| GKL eps ramp | eps_t = 8/255 · t/200 | eps_t = 8/255 · t/10: reaches 8/255 at the last epoch | proportional (built into the schedule) |
| GKL AWP | gamma 0.005 from epoch 10 of 200 | gamma 0.005 from epoch max(1, round(0.05 · 10)) = 1 | start at 5% of the run |
| GKL weight average | per-epoch average, tau 0.9 (time constant 10 epochs = 5% of the run) | iteration EMA, decay 1 − 1/(0.05 · 10 epochs · 79 steps) = 0.9747 | same 5%-of-the-run time constant; a per-epoch tau cannot express half an epoch |
| GKL loss | alpha 4, beta 20, gamma 1, T 4 | unchanged | |
| TRADES loss | beta 6 | unchanged | |
| validation | — | clean + PGD-10 on 512 held-out training images after every epoch (the curves) | |
| test | full test set | `advtrain eval` PGD-20 and AutoAttack standard on the first 1,000 test images | |
""".strip()

STUDY = Study(
    name="study_a_cifar10",
    title="Study A: PGD-AT vs TRADES vs GKL-AT on CIFAR-10 at CPU scale",
    dataset="cifar10",
    methods=(
        Method("PGD-AT", "pgdat", "study_cifar10_pgdat", relative_cost=0.55),
        Method("TRADES", "trades", "study_cifar10_trades", relative_cost=0.8),
        Method("GKL", "gkl", "study_cifar10_gkl", relative_cost=1.0),
        Method("GKL loss only", "gkl_loss", "study_cifar10_gkl_loss", relative_cost=0.82),
    ),
    seeds=(0, 1),
    evals=(
        EvalSpec("pgd20", "PGD-20", ("eval=pgd20", "n_examples=1000")),
        EvalSpec("aa", "AutoAttack", ("eval=aa_standard", "n_examples=1000")),
    ),
    scaling=SCALING,
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run (or resume) the study and write its report; the exit code is 1 if any job failed."""
    return run_study(STUDY, argv, write_report=write_report)


if __name__ == "__main__":
    sys.exit(main())
