"""dvc.yaml agrees with the code: each stage's code deps are its import closure, its params the keys its
module declares and reads (retinopathy.pipeline.dvcyaml, retinopathy.pipeline.paramkeys' static check),
its paths the contract's.

And the house rule that makes the first true: no stage module imports another
stage module, so a stage's deps are only the library rooms it really runs.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
import yaml

from retinopathy.cli import COMMANDS, module_of
from retinopathy.core.contract import ARMS, EXTERNAL_FIGURE, REPORT_FIGURES, SCREENING_FIGURES, Layout
from retinopathy.core.errors import RetinopathyError
from retinopathy.engine import checkpoint
from retinopathy.pipeline import codedeps, dvcyaml, paramkeys

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src/retinopathy"
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())
STAGES = DVC["stages"]


def stage_command(spec: dict) -> str:
    return spec["cmd"].split()[1]  # `retinopathy <command> ...`


@pytest.mark.slow
def test_dvc_yaml_lists_each_stages_code_and_params() -> None:
    # The one check a contributor runs too: `python -m retinopathy.pipeline.dvcyaml --check`.
    assert dvcyaml.problems(REPO / "dvc.yaml") == []


@pytest.mark.slow
def test_the_check_names_the_stage_the_entries_and_the_fix_and_the_rewrite_mends_it(tmp_path, capsys) -> None:
    original = (REPO / "dvc.yaml").read_text()
    broken = original.replace("      - train.batch_size\n      - evaluate\n", "      - evaluate\n").replace(
        "      - src/retinopathy/data/checks.py\n", "      - src/retinopathy/data/cache.py\n"
    )
    assert broken != original
    path = tmp_path / "dvc.yaml"
    path.write_text(broken)
    assert dvcyaml.main(["--check", "--file", str(path)]) == 1
    err = capsys.readouterr().err
    assert "stage `evaluate` (retinopathy.stages.evaluate): params lacks train.batch_size" in err
    assert "stage `prepare` (retinopathy.stages.prepare): deps lacks src/retinopathy/data/checks.py" in err
    assert "deps lists src/retinopathy/data/cache.py, which the code does not import" in err
    assert "fix: run `python -m retinopathy.pipeline.dvcyaml`" in err
    assert path.read_text() == broken  # --check changes nothing
    assert dvcyaml.main(["--file", str(path)]) == 0
    assert path.read_text() == original  # comments, order and the other deps kept


@pytest.mark.slow
def test_the_rewrite_adds_a_missing_list_and_drops_an_empty_one(tmp_path) -> None:
    text = (REPO / "dvc.yaml").read_text()
    start = text.index("    params:\n      - demo\n")
    broken = text[:start] + text[start:].replace("    params:\n      - demo\n", "", 1)
    broken = broken.replace(
        "      - src/retinopathy/stages/report.py\n",
        "      - src/retinopathy/stages/report.py\n    params:\n      - model\n",
    )
    path = tmp_path / "dvc.yaml"
    path.write_text(broken)
    assert dvcyaml.main(["--file", str(path)]) == 0
    assert path.read_text() == text


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_params_read_of_a_stage_is_declared(stage: str) -> None:
    # Reads that no test runs (a CUDA-only branch) are seen too: the check reads the source.
    module = module_of(stage_command(STAGES[stage]))
    source = codedeps.module_file(module)
    assert source is not None
    assert paramkeys.undeclared_reads(source, dvcyaml.declared_params(module)) == []


def test_train_reads_every_key_it_declares() -> None:
    # dvc.yaml reruns training when one of these changes: each must be one the stage reads.
    source = codedeps.module_file("retinopathy.stages.train")
    assert source is not None
    read = {item.key for item in paramkeys.reads(source)}
    # train.portable is read before torch starts, by `retinopathy` itself (core/portable.py).
    assert set(dvcyaml.declared_params("retinopathy.stages.train")) - read == {"train.portable"}


FAKE_STAGE = """
from retinopathy.core.config import Params, TrainParams, load_params

PARAMS = ("model",)


def helper(train: TrainParams) -> int:
    return train.batch_size


def run(params: Params) -> None:
    data, train = params.data, params.train
    print(data.root, train.epochs_for(params.model))
    augment(params.augment)
    helper(params.train)
    keep(params.to_dict())
    library_call(params)


def main(argv=None) -> int:
    run(load_params("params.yaml"))
    seed = load_params("other.yaml").demo.seed
    return seed
"""


def test_the_check_follows_params_through_names_sections_and_methods(tmp_path) -> None:
    path = tmp_path / "fake_stage.py"
    path.write_text(FAKE_STAGE)
    found = paramkeys.reads(path)

    def line(text: str) -> int:
        return next(number for number, each in enumerate(FAKE_STAGE.split("\n"), 1) if text in each)

    # Through an annotated section, names bound to sections, a section's method, the file's own
    # key, a whole section passed on, a load_params(...) of its own; not through to_dict().
    assert sorted((item.line, item.key) for item in found if item.key) == [
        (line("return train.batch_size"), "train.batch_size"),
        (line("print(data.root"), "data.root"),
        (line("print(data.root"), "model"),
        (line("print(data.root"), "train.epochs"),
        (line("augment(params.augment)"), "augment"),
        (line(".demo.seed"), "demo.seed"),
    ]
    assert [(item.line, item.leaves) for item in found if item.leaves] == [
        (line("library_call(params)"), "library_call")
    ]
    problems = paramkeys.undeclared_reads(path, ("model", "data", "train", "augment"))
    assert problems == [
        f"{path}:{line('library_call(params)')}: passes all of params to library_call, whose reads no "
        "check can see; pass it the values it uses",
        f"{path}:{line('.demo.seed')}: reads params key `demo.seed`, which PARAMS does not declare; add "
        '"demo.seed" to PARAMS, then run `python -m retinopathy.pipeline.dvcyaml` so that dvc.yaml lists '
        "it and DVC reruns the stage when it changes",
    ]
    assert paramkeys.undeclared_reads(path, ("model", "data.root", "train", "augment", "demo"))[1:] == []
    with pytest.raises(RetinopathyError, match="`train.lr_typo`, which is no key of params.yaml"):
        paramkeys.check_declaration(("train.lr_typo",), "retinopathy.stages.x")


@pytest.mark.slow
def test_an_undeclared_read_fails_the_check_and_stops_the_rewrite(tmp_path, monkeypatch, capsys) -> None:
    # As if train.py's PARAMS lacked train.lr: the check names the line that reads it and the fix.
    declared = dvcyaml.declared_params
    monkeypatch.setattr(
        dvcyaml, "declared_params", lambda module: tuple(k for k in declared(module) if k != "train.lr")
    )
    path = tmp_path / "dvc.yaml"
    shutil.copy(REPO / "dvc.yaml", path)
    assert dvcyaml.main(["--check", "--file", str(path)]) == 1
    err = capsys.readouterr().err
    assert "src/retinopathy/stages/train.py:" in err and "reads params key `train.lr`, which PARAMS" in err
    assert 'add "train.lr" to PARAMS' in err
    assert dvcyaml.main(["--file", str(path)]) == 1
    assert "not rewritten; declare those keys first" in capsys.readouterr().err
    assert path.read_text() == (REPO / "dvc.yaml").read_text()  # dvc.yaml still lists train.lr


@pytest.mark.slow
def test_library_code_takes_values_not_the_params_file() -> None:
    # Only the stages read params (and commands that are no stage, such as predict): every other
    # module takes the values it uses, so the check above sees every read of a stage.
    readers = {"stages", "commands", "pipeline"}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] in readers or relative.as_posix() == "core/config.py":
            continue
        names = {
            alias.name
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom) and node.module == "retinopathy.core.config"
            for alias in node.names
        }
        assert "Params" not in names, f"{relative} takes all of params.yaml"


@pytest.mark.slow
def test_each_stage_runs_on_the_params_it_declares(tiny_project) -> None:
    # Each DVC stage's main, as `dvc repro` runs it (conftest's fixture ran prepare and weights the same way).
    from retinopathy.stages import demo_data, evaluate, explain, prepare, quality, train

    shutil.copy(tiny_project / "params.yaml", tiny_project / "one-epoch.yaml")
    text = (tiny_project / "one-epoch.yaml").read_text().replace("epochs: 2", "epochs: 1")
    (tiny_project / "one-epoch.yaml").write_text(text)
    one = ["--params", "one-epoch.yaml"]
    assert demo_data.main(["--out", "demo-again", *one]) == 0
    assert prepare.main(["--out", "prepared-again", *one]) == 0
    assert quality.main(one) == 0
    for stage in (train, evaluate, explain):
        assert stage.main(["--init", "scratch", *one]) == 0


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_no_stage_module_imports_another_stage_module(command: str) -> None:
    module = module_of(command)
    own = codedeps.module_file(module)
    room = own.parent if own.name == "__init__.py" else own  # a package (bench) is one room
    stages = PACKAGE / "stages"
    for path in codedeps.import_closure(module):
        if stages in path.parents and path != stages / "__init__.py":
            assert path == room or room in path.parents, f"{module} imports {path.relative_to(PACKAGE)}"


@pytest.mark.slow
def test_library_modules_import_no_stage_module() -> None:
    for path in PACKAGE.rglob("*.py"):
        if "stages" in path.relative_to(PACKAGE).parts:
            continue
        for name in codedeps.imported_modules(path):
            assert not name.startswith("retinopathy.stages"), f"{path.relative_to(PACKAGE)} imports {name}"


def test_package_init_files_hold_only_docstrings() -> None:
    # They are left out of the code deps, so they must not run any code.
    for init in PACKAGE.rglob("__init__.py"):
        if init.parent.name == "bench":
            continue  # the bench command's package re-exports its main; it is no DVC stage
        body = ast.parse(init.read_text()).body
        kinds = {type(node) for node in body[1:]}
        assert kinds <= {ast.Assign} and isinstance(body[0], ast.Expr), init  # docstring, __version__


@pytest.mark.slow
def test_the_fingerprinted_training_code_is_the_train_stage_deps() -> None:
    listed = [dep.removeprefix("src/") for dep in STAGES["train"]["deps"] if str(dep).startswith("src/")]
    assert sorted(listed) == codedeps.code_deps(checkpoint.TRAINING_STAGE)


def test_the_demo_painter_is_a_dependency_of_demo_data_only() -> None:
    painter = "src/retinopathy/data/synthetic.py"
    assert [name for name, spec in STAGES.items() if painter in spec["deps"]] == ["demo-data"]


def _expand(path: str) -> list[str]:
    return [path.replace("${item.init}", arm) for arm in ARMS] if "${item.init}" in path else [path]


def _outs(stage: str) -> set[str]:
    found = set()
    for out in STAGES[stage]["outs"]:
        found.update(_expand(next(iter(out)) if isinstance(out, dict) else out))
    return found


def test_stage_outputs_are_the_contract_paths() -> None:
    layout = Layout()
    arms = [layout.arm(arm) for arm in ARMS]
    assert _outs("demo-data") == {str(layout.demo), str(layout.demo_shifted)}
    assert _outs("prepare") == {str(layout.prepared)}
    assert _outs("weights") == {str(layout.manifests)}
    assert _outs("quality") == {
        str(p)
        for p in (layout.quality_photos, layout.quality_metrics, layout.quality_info, layout.quality_assessor)
    }
    assert _outs("train") == {str(p) for a in arms for p in (a.model_dir, a.history)}
    assert _outs("evaluate") == {
        str(p)
        for a in arms
        for p in (
            a.metrics,
            a.info,
            a.confusion_counts,
            a.confusion_normalized,
            a.predictions,
            a.val_predictions,
            a.screening_files.screening,
            a.screening_files.roc_image,
            a.screening_files.roc_patient,
            a.screening_files.reliability,
        )
    }
    fused = [layout.fused(arm) for arm in ARMS]
    assert _outs("fuse") == {
        str(p)
        for arm in ARMS
        for p in (layout.blend(arm), layout.fused_metrics(arm), layout.fused_predictions(arm))
    } | {str(p) for f in fused for p in (f.screening, f.roc_image, f.roc_patient, f.reliability)}
    assert _outs("explain") == {str(layout.explanation(arm)) for arm in ARMS}
    external = [layout.external(arm) for arm in ARMS]
    assert _outs("external") == {str(p) for e in external for p in (e.headline, e.folder)}
    figures = [
        layout.report,
        *(layout.figure(name) for name in (*REPORT_FIGURES, *SCREENING_FIGURES)),
        *(layout.confusion_figure(arm) for arm in ARMS),
        layout.figure(EXTERNAL_FIGURE),
    ]
    assert _outs("report") == {str(path) for path in figures}
    fused_headlines = {str(layout.fused_metrics(arm)) for arm in ARMS}
    external_headlines = {str(e.headline) for e in external}
    assert set(DVC["metrics"]) == {str(a.metrics) for a in arms} | fused_headlines | external_headlines
    report_deps = set(DVC["stages"]["report"]["deps"])
    assert fused_headlines | {str(layout.fused(arm).screening) for arm in ARMS} <= report_deps
    assert {str(e.folder) for e in external} <= report_deps
    for stage, option, path in (
        ("demo-data", "--out", layout.demo),
        ("demo-data", "--shifted", layout.demo_shifted),
        ("prepare", "--out", layout.prepared),
        ("weights", "--out", layout.manifests),
        ("report", "--out", layout.plots),
        ("report", "--metrics", layout.metrics),
    ):
        words = STAGES[stage]["cmd"].split()
        assert words[words.index(option) + 1] == str(path), (stage, option)
