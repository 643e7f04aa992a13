# Copyright the statex-hf authors. Licensed under the Apache License, Version 2.0.
"""Convert a flash-linear-attention GLA checkpoint into a StateX GLA checkpoint (head merging).

Example, the paper's setting (layers 0, 6, 12, 18 of GLA-1.3B merged to one head, their token mixers
re-initialized as the paper's released code does, the default ``--init reinit``):

    python conversion_scripts/convert_gla_to_statex.py fla-hub/gla-1.3B-100B out/statex-gla-1.3b

The same conversion as ``statex-hf convert gla``; both call ``statex_hf.conversion.convert``.
"""

import argparse
import sys
from collections.abc import Sequence

from statex_hf.cli import StateXArgumentParser, run_command
from statex_hf.conversion.cli import add_convert_arguments


def main(argv: Sequence[str] | None = None) -> int:
    parser = StateXArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_convert_arguments(parser, "gla")
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
