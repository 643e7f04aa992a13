# Copyright the statex-hf authors. Licensed under the Apache License, Version 2.0.
"""Convert a Mamba2 checkpoint (state-spaces / mamba_ssm, mistral, or transformers) into a StateX Mamba2 checkpoint.

Example, the paper's setting (layers 0, 12, 24, 36 of Mamba2-1.3B, state size 128 -> 512, B/C and the
state parameters re-initialized as the paper's released code does, the default ``--init reinit``):

    python conversion_scripts/convert_mamba2_to_statex.py state-spaces/mamba2-1.3b out/statex-mamba2-1.3b \
        --tokenizer EleutherAI/gpt-neox-20b

``--every 1`` expands every layer (the reference script's variant). The same conversion as
``statex-hf convert mamba2``; both call ``statex_hf.conversion.convert``.
"""

import argparse
import sys
from collections.abc import Sequence

from statex_hf.cli import StateXArgumentParser, run_command
from statex_hf.conversion.cli import add_convert_arguments


def main(argv: Sequence[str] | None = None) -> int:
    parser = StateXArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_convert_arguments(parser, "mamba2")
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
