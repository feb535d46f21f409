"""`python -m advtrain COMMAND [hydra overrides]`: dispatch to one small Hydra entry per command."""

from __future__ import annotations

import sys

USAGE = """usage: python -m advtrain COMMAND [hydra overrides...]

commands:
  train    adversarial training          python -m advtrain train +exp=cifar10_gkl [key=value ...]
  eval     clean / PGD / AutoAttack       python -m advtrain eval ckpt=PATH eval=aa_standard n_examples=1000
  export   RobustBench zoo + leaderboard  python -m advtrain export ckpt=PATH results=PATH/results.json
  bench    performance benchmarks         python -m advtrain bench [bench=NAME]
  report   tables and plots of runs       python -m advtrain report RUN [RUN ...] out=DIR

Each command takes Hydra overrides (`--cfg job` prints the composed config, `-m` runs a sweep,
`--help` lists the config groups). Configs live in configs/. `report` takes run paths and
key=value options instead (`python -m advtrain report --help`).
"""

COMMANDS = ("train", "eval", "export", "bench", "report")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:  # no command: a mistake, not a request for help (scripts must not pass)
        print("error: no command given\n", file=sys.stderr)
        print(USAGE, file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}\n", file=sys.stderr)
        print(USAGE, file=sys.stderr)
        return 2
    try:
        from advtrain import cli

        return cli.run(command, rest)
    except KeyboardInterrupt:  # Ctrl-C before the command's own handler was installed (imports)
        print(
            "interrupted by SIGINT before the command started; nothing was written", file=sys.stderr
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
