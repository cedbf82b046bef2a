"""dvc.yaml's generated lists: each stage's code deps and params, from the code.

``python -m retinopathy.pipeline.dvcyaml`` rewrites, for every stage whose command is
``retinopathy <command>``, the ``src/`` entries of its ``deps`` (the import
closure of the command's module, :func:`retinopathy.pipeline.codedeps.code_deps`) and its
``params`` (the module's ``PARAMS`` less the speed-only keys,
:func:`retinopathy.pipeline.paramkeys.results_keys`), in place: comments, the other deps
and everything else stay as they are. ``--check`` changes nothing; it prints each
difference, and each read of a params key that a stage's ``PARAMS`` lacks
(:func:`retinopathy.pipeline.paramkeys.undeclared_reads`), and exits 1 (the tests and CI
run it). Such a read is the code's to mend: the rewrite then changes nothing either.

The rewrite works on lines, so it relies on dvc.yaml's layout: stages under
``stages:`` at two spaces, their keys at four, list items at six (``- item``),
the ``src/`` deps after the others.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from retinopathy.cli import COMMANDS, module_of
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.files import write_text_atomic
from retinopathy.pipeline import codedeps, paramkeys

FIX = "python -m retinopathy.pipeline.dvcyaml"
_STAGE = re.compile(r"^  ([A-Za-z0-9_@-]+):\s*(#.*)?$")
_KEY = re.compile(r"^    ([A-Za-z_]+):")
_ITEM = re.compile(r"^      - ([^#]*?)\s*(#.*)?$")


def declared_params(module: str) -> tuple[str, ...]:
    """The literal ``PARAMS`` tuple of ``module``'s source (read, not imported: no torch).

    Raises:
        RetinopathyError: if the module has no ``PARAMS = (...)`` of strings at its top level.
    """
    path = codedeps.module_file(module)
    if path is None:
        raise RetinopathyError(f"{module}: no such module in src/retinopathy")
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, expression = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, expression = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id == "PARAMS":
            try:
                value = ast.literal_eval(expression)
            except ValueError:
                value = None
            if isinstance(value, tuple) and all(isinstance(key, str) for key in value):
                paramkeys.check_declaration(value, module)
                return value
            raise RetinopathyError(
                f"{path}:{node.lineno}: PARAMS must be a literal tuple of strings "
                "(the params keys the stage reads)"
            )
    raise RetinopathyError(
        f"{path}: declares no PARAMS; a DVC stage's module lists the params keys it "
        'reads there, e.g. PARAMS = ("train.lr",), or PARAMS = () for none'
    )


@dataclass(frozen=True)
class Wanted:
    """What the code says one stage's generated lists hold."""

    code: list[str]  # deps under src/, sorted
    params: list[str]  # in the declaration's order


def stage_module(spec: dict) -> str | None:
    """The module that runs a stage's ``cmd`` (None when it is no ``retinopathy <command>``)."""
    words = str(spec.get("cmd", "")).split()
    if len(words) >= 2 and words[0] == "retinopathy" and words[1] in COMMANDS:
        return module_of(words[1])
    return None


def wanted(spec: dict) -> Wanted | None:
    module = stage_module(spec)
    if module is None:
        return None
    return Wanted(
        code=[f"src/{name}" for name in codedeps.code_deps(module)],
        params=paramkeys.results_keys(declared_params(module)),
    )


def _differences(kind: str, listed: list[str], want: list[str]) -> list[str]:
    if listed == want:
        return []
    missing = [item for item in want if item not in listed]
    extra = [item for item in listed if item not in want]
    out = []
    if missing:
        out.append(f"{kind} lacks {', '.join(missing)}")
    if extra:
        verb = "read" if kind == "params" else "import"
        out.append(f"{kind} lists {', '.join(extra)}, which the code does not {verb}")
    if not out:
        out.append(f"{kind} is in another order than {', '.join(want)}")
    return out


def undeclared(path: Path) -> list[str]:
    """Each read of a params key, in the stages of dvc.yaml at ``path``, that the stage's PARAMS lacks."""
    stages = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("stages", {})
    modules = sorted({module for spec in stages.values() if (module := stage_module(spec)) is not None})
    found = []
    for module in modules:
        source = codedeps.module_file(module)
        assert source is not None  # stage_module: a command of the CLI, whose module exists
        found += paramkeys.undeclared_reads(source, declared_params(module))
    return found


def problems(path: Path) -> list[str]:
    """Each stage of dvc.yaml at ``path`` whose generated lists differ from the code, with how, and
    each read of a params key that a stage does not declare (:func:`undeclared`)."""
    stages = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("stages", {})
    found = undeclared(path)
    for name, spec in stages.items():
        want = wanted(spec)
        if want is None:
            continue
        deps = [str(dep) for dep in spec.get("deps", [])]
        params = [str(key) for key in spec.get("params", [])]
        for line in _differences("deps", [d for d in deps if d.startswith("src/")], want.code) + _differences(
            "params", params, want.params
        ):
            found.append(f"{path}: stage `{name}` ({stage_module(spec)}): {line}")
    return found


def _block_end(lines: list[str], start: int, pattern: re.Pattern[str]) -> int:
    end = start
    while end < len(lines) and pattern.match(lines[end]) is None and lines[end].strip():
        end += 1
    return end


def _items(lines: list[str], start: int) -> tuple[int, dict[str, str]]:
    """The list items after line ``start``: the index past the last, and each item's comment."""
    comments: dict[str, str] = {}
    end = start + 1
    while end < len(lines) and (match := _ITEM.match(lines[end])):
        comments[match.group(1)] = f"  {match.group(2)}" if match.group(2) else ""
        end += 1
    return end, comments


def _key_line(block: list[str], keys: tuple[str, ...]) -> int | None:
    """The index of the first line of ``block`` that starts one of the stage keys ``keys``."""
    for index, line in enumerate(block):
        match = _KEY.match(line)
        if match is not None and match.group(1) in keys:
            return index
    return None


def _rewrite_list(block: list[str], key: str, keep: list[str], generated: list[str]) -> list[str]:
    """``block`` (one stage's lines) with list ``key`` holding ``keep`` lines and then ``generated``."""
    at = _key_line(block, (key,))
    if at is None:
        if not generated:
            return block
        later = ("outs", "metrics", "plots") if key == "params" else ("params", "outs", "metrics", "plots")
        before = _key_line(block, later)
        before = len(block) if before is None else before
        return block[:before] + [f"    {key}:"] + [f"      - {item}" for item in generated] + block[before:]
    end, comments = _items(block, at)
    items = [
        line for line in block[at + 1 : end] if (item := _ITEM.match(line)) and item.group(1) in keep
    ] + [f"      - {item}{comments.get(item, '')}" for item in generated]
    if not items:
        return block[:at] + block[end:]
    return block[: at + 1] + items + block[end:]


def rewrite(text: str) -> str:
    """dvc.yaml's text with every ``retinopathy`` stage's code deps and params as the code says."""
    stages = (yaml.safe_load(text) or {}).get("stages", {})
    lines = text.split("\n")
    start = lines.index("stages:")
    out = lines[: start + 1]
    i = start + 1
    while i < len(lines) and (not lines[i] or lines[i].startswith((" ", "#"))):
        match = _STAGE.match(lines[i])
        if match is None:
            out.append(lines[i])
            i += 1
            continue
        end = i + 1
        while end < len(lines) and not _STAGE.match(lines[end]) and (not lines[end] or lines[end][0] in " #"):
            end += 1
        while end > i + 1 and not lines[end - 1].strip():
            end -= 1  # the blank lines between stages are not the stage's
        block = lines[i:end]
        want = wanted(stages[match.group(1)])
        if want is not None:
            deps = [str(dep) for dep in stages[match.group(1)].get("deps", [])]
            block = _rewrite_list(block, "deps", [d for d in deps if not d.startswith("src/")], want.code)
            block = _rewrite_list(block, "params", [], want.params)
        out += block
        i = end
    out += lines[i:]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """``python -m retinopathy.pipeline.dvcyaml [--check] [--file dvc.yaml]``."""
    parser = argparse.ArgumentParser(
        prog="python -m retinopathy.pipeline.dvcyaml", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--check", action="store_true", help="Change nothing; exit 1 on a difference.")
    parser.add_argument("--file", type=Path, default=Path("dvc.yaml"), help="default: dvc.yaml")
    args = parser.parse_args(argv)
    try:
        found = problems(args.file)
        code = undeclared(args.file)  # the code's to mend (declare the key), not dvc.yaml's
        if args.check:
            for line in found:
                print(line, file=sys.stderr)
            if len(found) > len(code):
                print(f"fix: run `{FIX}` (it rewrites these lists in {args.file} in place)", file=sys.stderr)
            return 1 if found else 0
        if code:
            for line in code:
                print(line, file=sys.stderr)
            print(f"{args.file}: not rewritten; declare those keys first", file=sys.stderr)
            return 1
        text = args.file.read_text(encoding="utf-8")
        new = rewrite(text)
        if new != text:
            write_text_atomic(args.file, new)  # a kill leaves the old file or the new, never half
        for line in found:
            print(f"fixed: {line}")
        left = problems(args.file)
        if left:
            raise RetinopathyError(
                "\n".join(left) + "\n(the line-based rewrite could not mend these; edit dvc.yaml by hand)"
            )
    except RetinopathyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
