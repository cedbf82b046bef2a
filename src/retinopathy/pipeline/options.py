"""The options the stages share: ``--params FILE``, and ``--init ARM`` for a stage of one arm.

Each stage's ``main`` builds its parser here and reads params.yaml through
:func:`stage_params`, so every stage names the parameters file in one way (which keys
it may read is checked in its source: :mod:`retinopathy.pipeline.paramkeys`).
Light: argparse and the config reader, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse

from retinopathy.core.config import Params, load_params
from retinopathy.core.contract import ARMS


def _params_option(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--params", default="params.yaml", metavar="FILE", help="The parameters file (default: params.yaml)."
    )
    return parser


def stage_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A stage's parser with its first option, ``--params FILE`` (default: params.yaml).

    Args:
        prog: ``retinopathy <command>``.
        description: The first line of ``--help``.
    """
    return _params_option(argparse.ArgumentParser(prog=prog, description=description))


def arm_parser(prog: str, description: str, what: str) -> argparse.ArgumentParser:
    """The parser of a stage of one arm: ``--init scratch|pretrained`` (``what``: its help), ``--params``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--init", choices=ARMS, required=True, help=what)
    return _params_option(parser)


def stage_params(args: argparse.Namespace) -> Params:
    """params.yaml, or the file of ``--params``.

    Raises:
        RetinopathyError: the file is missing or invalid (naming the key and the fix).
    """
    return load_params(args.params)
