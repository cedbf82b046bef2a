"""Rewrite (or check) README.md's command samples from real runs of the commands.

A sample is a fenced block between two HTML comments that name the command:

    <!-- sample: dvc metrics show -->
    ```
    ...what the command printed...
    ```
    <!-- /sample -->

Leading VAR=value words set the command's environment (`COLUMNS=80 dvc exp show ...` for a sample
that shows an 80-column terminal). Only `dvc` commands are run, in the repository root, without a
shell. After the final `dvc repro` (and the experiments a sample shows), from the repository root:

    python scripts/readme_samples.py            # rewrite every marked block
    python scripts/readme_samples.py --check    # exit 1 and show the difference where one is stale

tests/test_readme.py runs `--check --only 'dvc metrics show'` on the committed metrics.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = re.compile(
    r"(?P<open><!-- sample: (?P<command>.+?) -->\n```[^\n]*\n)(?P<body>.*?)(?P<close>```\n"
    r"<!-- /sample -->)",
    re.DOTALL,
)


def run_sample(command: str, cwd: Path) -> str:
    """What ``command`` (optionally led by VAR=value words) prints, with trailing blanks cut."""
    words = shlex.split(command)
    env = dict(os.environ)
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    if not words or words[0] != "dvc":
        sys.exit(f"README sample {command!r}: only dvc commands are run")
    result = subprocess.run(words, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"README sample {command!r} failed (exit {result.returncode}):\n{result.stderr.strip()}")
    lines = [line.rstrip() for line in result.stdout.splitlines()]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines) + "\n"


def normalise(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines()) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Rewrite or check the marked samples; return 1 if --check finds a stale one."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    parser.add_argument("--cwd", type=Path, default=REPO, help="where the commands run (default: here)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a sample differs")
    parser.add_argument("--only", default=None, help="only the samples whose command starts with this")
    args = parser.parse_args(argv)

    text = args.readme.read_text(encoding="utf-8")
    samples = [m for m in SAMPLE.finditer(text) if args.only is None or m["command"].startswith(args.only)]
    if not samples:
        sys.exit(
            f"{args.readme}: no '<!-- sample: {args.only or 'COMMAND'} -->' block followed by a fenced "
            f"block and '<!-- /sample -->'"
        )
    stale = 0
    pieces, last = [], 0
    for match in samples:
        fresh = run_sample(match["command"], args.cwd)
        if normalise(match["body"]) != fresh:
            stale += 1
            line = text.count("\n", 0, match.start()) + 1
            print(f"{args.readme}:{line}: `{match['command']}` prints something else now:")
            sys.stdout.writelines(
                difflib.unified_diff(
                    normalise(match["body"]).splitlines(True), fresh.splitlines(True), "README", "now"
                )
            )
        pieces += [text[last : match.start("body")], fresh]
        last = match.end("body")
    pieces.append(text[last:])
    if args.check:
        print(f"{len(samples) - stale} of {len(samples)} README samples are current")
        return 1 if stale else 0
    if stale:
        temporary = args.readme.with_name(f".{args.readme.name}.samples.tmp")
        temporary.write_text("".join(pieces), encoding="utf-8")
        temporary.replace(args.readme)
    print(f"{stale} of {len(samples)} README samples rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
