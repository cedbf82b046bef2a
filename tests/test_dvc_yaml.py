"""dvc.yaml agrees with the code: each stage's code deps are its import closure, its params the keys its
module declares and reads (retinopathy.pipeline.dvcyaml, retinopathy.pipeline.paramkeys), its paths the
contract's.

And the house rule that makes the first true: no stage module imports another
stage module, so a stage's deps are only the library rooms it really runs.
"""

from __future__ import annotations

import ast
import pickle
import shutil
from pathlib import Path

import pytest
import yaml

from retinopathy.cli import COMMANDS, module_of
from retinopathy.core.config import load_params
from retinopathy.core.contract import ARMS, REPORT_FIGURES, SCREENING_FIGURES, Layout
from retinopathy.core.errors import RetinopathyError
from retinopathy.engine import checkpoint
from retinopathy.pipeline import codedeps, dvcyaml, paramkeys

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src/retinopathy"
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())
STAGES = DVC["stages"]


def stage_command(spec: dict) -> str:
    return spec["cmd"].split()[1]  # `retinopathy <command> ...`


def test_dvc_yaml_lists_each_stages_code_and_params() -> None:
    # The one check a contributor runs too: `python -m retinopathy.pipeline.dvcyaml --check`.
    assert dvcyaml.problems(REPO / "dvc.yaml") == []


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


def _params_reads(path: Path) -> set[str]:
    """The keys read as ``params.<section>.<key>`` or ``params.<key>`` (also ``x.params...``) in ``path``."""
    known = set(paramkeys.known_keys())
    sections = {key.split(".")[0] for key in known if "." in key}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Attribute):
            continue
        parts, inner = [], node
        while isinstance(inner, ast.Attribute):
            parts.insert(0, inner.attr)
            inner = inner.value
        names = ([inner.id] if isinstance(inner, ast.Name) else []) + parts
        if "params" in names:
            after = names[names.index("params") + 1 :]
            key = ".".join(after[:2]) if after and after[0] in sections else (after[0] if after else "")
            if key in known and key not in sections:
                found.add(key)
    return found


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_the_params_a_stage_reads_by_name_are_declared(stage: str) -> None:
    # Reads that no test runs (a CUDA-only branch) are still seen here, as far as they are spelled out.
    module = module_of(stage_command(STAGES[stage]))
    declared = set(dvcyaml.declared_params(module)) | set(paramkeys.SPEED_ONLY)
    # parsing, not reading
    skip = {codedeps.PACKAGE / "core" / "config.py", codedeps.PACKAGE / "pipeline" / "paramkeys.py"}
    for path in codedeps.import_closure(module) - skip:
        for key in _params_reads(path):
            assert key in declared or key.split(".")[0] in declared, (
                f"{path.relative_to(REPO)} reads `{key}`, which {module}.PARAMS does not declare"
            )


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_stage_that_loads_params_reads_them_through_its_declaration(stage: str) -> None:
    module = module_of(stage_command(STAGES[stage]))
    tree = ast.parse(codedeps.module_file(module).read_text())
    main = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "main")
    calls = {
        node.func.id
        for node in ast.walk(main)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    assert "load_params" not in calls or "restrict" in calls, module


def test_restricted_params_refuse_an_undeclared_key_and_name_the_fix() -> None:
    params = paramkeys.restrict(
        load_params(REPO / "params.yaml"), ("model", "train.lr", "augment"), "retinopathy.stages.x"
    )
    assert params.model and params.train.lr > 0 and params.augment.active in (True, False)
    assert params.data.num_workers == load_params(REPO / "params.yaml").data.num_workers  # speed only
    assert set(params.to_dict()) == {"model", "data", "demo", "augment", "train", "evaluate", "fuse"}
    with pytest.raises(
        RetinopathyError,
        match=r"retinopathy.stages.x reads params key `train.epochs`.*"
        r"add \"train.epochs\" to PARAMS in src/retinopathy/stages/x.py.*"
        r"retinopathy.pipeline.dvcyaml",
    ):
        params.train.epochs_for("resnet18")  # through a method too
    with pytest.raises(RetinopathyError, match="`data.root`"):
        _ = params.data.root
    again = paramkeys.restrict(params, ("data.root",), "retinopathy.stages.y")  # from the whole file
    assert again.data.root and pickle.loads(pickle.dumps(again)).data.root == again.data.root
    with pytest.raises(RetinopathyError, match="retinopathy.stages.y reads params key `model`"):
        _ = pickle.loads(pickle.dumps(again)).model
    with pytest.raises(RetinopathyError, match="no key of params.yaml"):
        paramkeys.restrict(load_params(REPO / "params.yaml"), ("train.lr_typo",), "retinopathy.stages.x")


def test_each_stage_runs_on_the_params_it_declares(tiny_project) -> None:
    # Each DVC stage's main, as `dvc repro` runs it (conftest's fixture ran prepare and weights the same way).
    from retinopathy.stages import demo_data, evaluate, explain, prepare, train

    shutil.copy(tiny_project / "params.yaml", tiny_project / "one-epoch.yaml")
    text = (tiny_project / "one-epoch.yaml").read_text().replace("epochs: 2", "epochs: 1")
    (tiny_project / "one-epoch.yaml").write_text(text)
    one = ["--params", "one-epoch.yaml"]
    assert demo_data.main(["--out", "demo-again", *one]) == 0
    assert prepare.main(["--out", "prepared-again", *one]) == 0
    for stage in (train, evaluate, explain):
        assert stage.main(["--init", "scratch", *one]) == 0


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_no_stage_module_imports_another_stage_module(command: str) -> None:
    module = module_of(command)
    own = codedeps.module_file(module)
    room = own.parent if own.name == "__init__.py" else own  # a package (bench) is one room
    stages = PACKAGE / "stages"
    for path in codedeps.import_closure(module):
        if stages in path.parents and path != stages / "__init__.py":
            assert path == room or room in path.parents, f"{module} imports {path.relative_to(PACKAGE)}"


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
            a.screening,
            a.roc_image,
            a.roc_patient,
            a.reliability,
        )
    }
    fused = [layout.fused(arm) for arm in ARMS]
    assert _outs("fuse") == {
        str(p)
        for arm in ARMS
        for p in (layout.blend(arm), layout.fused_metrics(arm), layout.fused_predictions(arm))
    } | {str(p) for f in fused for p in (f.screening, f.roc_image, f.roc_patient, f.reliability)}
    assert _outs("explain") == {str(layout.explanation(arm)) for arm in ARMS}
    figures = [
        layout.report,
        *(layout.figure(name) for name in (*REPORT_FIGURES, *SCREENING_FIGURES)),
        *(layout.confusion_figure(arm) for arm in ARMS),
    ]
    assert _outs("report") == {str(path) for path in figures}
    fused_headlines = {str(layout.fused_metrics(arm)) for arm in ARMS}
    assert set(DVC["metrics"]) == {str(a.metrics) for a in arms} | fused_headlines
    report_deps = set(DVC["stages"]["report"]["deps"])
    assert fused_headlines | {str(layout.fused(arm).screening) for arm in ARMS} <= report_deps
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
