"""Issue 26, third round: bounded work, names that carry markup, refused pickles, huge grades.

Each test does what the hostile tester did, through the real CLI where it can without
training (a best.pt with random weights is enough for `predict`): a photograph whose
square is gigabytes, names with `<!--`, `|`, backticks and `$...$` in every list and in
the report's inputs, pickles of code behind every torch file, and a label of thousands
of digits.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_params
from retinopathy.cli import main as cli
from retinopathy.core.contract import MAX_IMAGE_SIZE, Layout
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.records import Skipped, read_info, write_info
from retinopathy.data.dataset import RetinopathyDataset
from retinopathy.data.images import PIXEL_CEILING
from retinopathy.data.index import read_index
from retinopathy.data.labels import SPLIT_FILES, Record, name_problem
from retinopathy.data.synthetic import render_fundus
from retinopathy.models.build import new_model
from retinopathy.models.grader import GraderSpec
from retinopathy.reporting.escape import md_code, md_prose, md_text, plain_text

# --------------------------------------------------------------------------------------- helpers

# What the hostile tester put into names: an HTML comment and script, a table cell's end,
# a code span's end, TeX math that crashes matplotlib's mathtext, and what is no name at all.
MARKUP = ["<!--x", "<script>x", "a|b", "a`b`", "$\\frac{1}$", "a$x$b"]
NOT_NAMES = [*MARKUP, "2576 right", "Müller_left", "a&amp;b", "_left"]
# The public sets' names (EyePACS, APTOS, IDRiD, Messidor, DDR): the rule admits all of them.
PUBLIC_NAMES = ["2576_right", "000c1434d8d7", "IDRiD_001", "20051019_38557_0100_PP", "007-0004-000"]


def fundus(seed: int, side: int = 64, grade: int = 0) -> np.ndarray:
    """A colour fundus picture (the demo's painter), side x side."""
    return render_fundus(grade, np.random.default_rng(seed), side)


def write_course(root: Path, train: list[str], test: list[str]) -> Path:
    """A course layout: the four lists (grades 0-4 in turn) and a distinct colour JPEG per name."""
    root.mkdir(parents=True, exist_ok=True)
    for split, names in (("train", train), ("test", test)):
        images, labels = SPLIT_FILES[split]
        (root / images).write_text("".join(f"{name}\n" for name in names))
        (root / labels).write_text("".join(f"{i % 5}\n" for i in range(len(names))))
    for seed, name in enumerate(train + test):
        Image.fromarray(fundus(seed, 64, seed % 5)).save(root / f"{name}.jpeg", quality=92)
    return root


def course_project(
    folder: Path, monkeypatch, train: list[str] | None = None, test: list[str] | None = None
) -> Path:
    """``folder`` with params.yaml pointing data.root at a small course layout; cwd set to it."""
    write_course(
        folder / "course", train or [f"{i}_left" for i in range(10)], test or [f"{i}_right" for i in range(5)]
    )
    write_params(folder, data={"root": "course"})
    monkeypatch.chdir(folder)
    return folder


def replace_line(path: Path, number: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")


def run(capsys, *argv: str) -> tuple[int, str]:
    """``retinopathy ARGV``: the exit status and stderr (argparse's exits included)."""
    capsys.readouterr()
    try:
        status = cli(list(argv))
    except SystemExit as exit_:
        status = exit_.code
    return status, capsys.readouterr().err


def fake_checkpoint(path: Path) -> Path:
    """A best.pt as training writes it, with random weights (enough for `predict`)."""
    torch.manual_seed(0)
    spec = GraderSpec(
        model="resnet18",
        image_size=32,
        normalize="imagenet",
        preprocess="none",
        loss="cross_entropy",
        thresholds=None,
    )
    torch.save(
        {
            "model": new_model("resnet18", num_classes=5).state_dict(),
            "spec": spec.to_dict(),
            "epoch": 1,
            "fingerprint": "test",
        },
        path,
    )
    return path


def predict_rows(capsys, folder: Path, *names: str, **data) -> tuple[int, str, dict[str, dict[str, str]]]:
    """`retinopathy predict` of ``folder / name`` for each name with a random best.pt (params: ``data``):
    the status, stderr and the CSV's rows by file name."""
    checkpoint = folder / "best.pt"
    if not checkpoint.exists():
        fake_checkpoint(checkpoint)
    write_params(folder, train={"batch_size": 2}, data=data)
    out = folder / "predictions.csv"
    status, err = run(
        capsys,
        "predict",
        *(str(folder / n) for n in names),
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(out),
        "--params",
        str(folder / "params.yaml"),
    )
    rows = {}
    if out.exists():
        with open(out, newline="") as stream:
            rows = {Path(row["image"]).name: row for row in csv.DictReader(stream)}
    return status, err, rows


def strip(path: Path, width: int, height: int) -> Path:
    """A long thin photograph: a bright band across its whole width on black (its 'fundus' is the band)."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[height // 10 : height - height // 10, :] = (180, 90, 40)
    Image.fromarray(pixels).save(path)
    return path


def unescaped_pipes(line: str) -> int:
    return len(re.findall(r"(?<!\\)\|", line))


def outside_code(text: str) -> str:
    """``text`` without its Markdown code spans (whose content is shown literally)."""
    return re.sub(r"(`+)(?!`).*?(?<!`)\1(?!`)", "", text)


def check_markup(text: str) -> None:
    """Outside code spans, no markup the tests put into names is left unescaped (HTML, math)."""
    for markup in ("<!--", "<script", "<b>", "</b>", "$x$", "$y$", "$\\frac"):
        assert re.search(rf"(?<!\\){re.escape(markup)}", outside_code(text)) is None, markup


def check_tables(text: str) -> None:
    """Every Markdown table row has as many cell borders as its header: no name split a cell."""
    header = None
    for line in text.splitlines():
        if line.startswith("|"):
            header = header if header is not None else unescaped_pipes(line)
            assert unescaped_pipes(line) == header, line
        else:
            header = None


# ----------------------------------------------------------------- 1. grades of thousands of digits


@pytest.mark.parametrize("line", ["0" * 5000 + "2", "0" * 5000, "9" * 5000, "02", "2.0"])
def test_a_grade_with_leading_zeros_or_thousands_of_digits_is_an_error_naming_the_line(
    tmp_path, monkeypatch, capsys, line
):
    project = course_project(tmp_path, monkeypatch)
    replace_line(project / "course/train_label.csv", 3, line)
    status, err = run(capsys, "prepare", "--out", "data/prepared")
    assert status == 2 and "course/train_label.csv:3: " in err
    assert "is not an integer grade 0-4" in err and len(err) < 1000 and "Traceback" not in err
    assert not (project / "data/prepared").exists()


def test_import_kaggle_refuses_a_level_of_thousands_of_digits_with_the_line(tmp_path, capsys):
    (tmp_path / "train").mkdir()
    labels = tmp_path / "trainLabels.csv"
    labels.write_text(f"image,level\n1_left,0\n1_right,{'0' * 5000}2\n")
    status, err = run(
        capsys,
        "import-kaggle",
        "--labels",
        str(labels),
        "--images",
        str(tmp_path / "train"),
        "--out",
        str(tmp_path / "course"),
        "--test-fraction",
        "0.5",
    )
    assert status == 2 and f"{labels}:3: label '0000" in err and "(5001 characters)" in err
    assert "without leading zeros" in err and "Traceback" not in err


def test_explain_refuses_a_damaged_grade_in_the_predictions_naming_the_line(tmp_path):
    from retinopathy.reporting.heatmaps import read_grades

    path = tmp_path / "scratch.csv"
    path.write_text("image,patient,actual,predicted\n1_left,1,0,0\n1_right,1," + "0" * 5000 + "2,1\n")
    with pytest.raises(RetinopathyError, match=r"scratch\.csv:3: 'actual' is not a grade 0-4"):
        read_grades(path, 2)
    path.write_text("image,patient,actual,predicted\n1_left,1,0,0\n1_right,1,2,1\n")
    actual, predicted = read_grades(path, 2)
    assert actual.tolist() == [0, 2] and predicted.tolist() == [0, 1]


# ------------------------------------------------------ 2. names: decided where they are first read


@pytest.mark.parametrize("name", NOT_NAMES)
def test_prepare_refuses_a_name_that_is_not_a_name_with_the_file_and_line(
    tmp_path, monkeypatch, capsys, name
):
    project = course_project(tmp_path, monkeypatch)
    replace_line(project / "course/train_img.csv", 3, name)
    status, err = run(capsys, "prepare", "--out", "data/prepared")
    assert status == 2 and "course/train_img.csv:3: " in err and "is not an image name" in err
    assert "ASCII letters, digits and _ - . +" in err and "Traceback" not in err
    assert not (project / "data/prepared").exists()


def test_the_public_sets_names_are_names(tmp_path, monkeypatch, capsys):
    course_project(
        tmp_path,
        monkeypatch,
        train=[*PUBLIC_NAMES, *(f"{i}_left" for i in range(5))],
        test=[f"{i}_right" for i in range(5)],
    )
    status, err = run(capsys, "prepare", "--out", "data/prepared")
    assert status == 0, err
    listed = {
        record.image
        for records in read_index(tmp_path / "data/prepared/index.csv").values()
        for record in records
    }
    assert set(PUBLIC_NAMES) <= listed


def test_no_name_can_hold_a_character_that_breaks_a_page_a_table_or_a_csv():
    # The predictions CSVs that `dvc plots show` embeds in its page hold only names the rule admits
    # (evaluate takes them from the prepared index, which is read with the same rule, below).
    for code in range(0x20, 0x7F):
        char = chr(code)
        if not (char.isalnum() or char in "_-.+"):
            assert name_problem(f"a{char}b") is not None, char
    for name in PUBLIC_NAMES:
        assert name_problem(name) is None


@pytest.mark.parametrize("name", MARKUP)
def test_a_hand_edited_index_cannot_bring_a_name_to_the_plots(tmp_path, name):
    index = tmp_path / "index.csv"
    with open(index, "w", newline="") as stream:
        csv.writer(stream).writerows(
            [["split", "image", "label"], ["train", "1_left", "0"], ["test", name, "1"]]
        )
    with pytest.raises(RetinopathyError, match=r"index\.csv:3: .* is not an image name"):
        read_index(index)


def test_import_kaggle_refuses_a_name_with_markup_with_the_line(tmp_path, capsys):
    (tmp_path / "train").mkdir()
    labels = tmp_path / "trainLabels.csv"
    labels.write_text("image,level\n1_left,0\n<!--x_right,1\n")
    status, err = run(
        capsys,
        "import-kaggle",
        "--labels",
        str(labels),
        "--images",
        str(tmp_path / "train"),
        "--out",
        str(tmp_path / "course"),
        "--test-fraction",
        "0.5",
    )
    assert status == 2 and f"{labels}:3: '<!--x_right' is not an image name (it contains '<')" in err


@pytest.mark.slow
def test_predict_refuses_a_photograph_whose_name_is_not_a_name_in_its_own_row(tmp_path, capsys):
    hostile = ["$x$.png", "a<b>.png", "IMG 0001.png", "a|b.png"]
    for seed, name in enumerate([*hostile, "7_left.png"]):
        Image.fromarray(fundus(seed, 64)).save(tmp_path / name)
    status, err, rows = predict_rows(capsys, tmp_path, *hostile, "7_left.png")
    assert status == 1 and f"{len(hostile)} of {len(hostile) + 1} images could not be graded" in err
    for name in hostile:
        assert rows[name]["grade"] == "" and "is not an image name" in rows[name]["error"]
        assert "rename the file" in rows[name]["error"]
    assert rows["7_left.png"]["grade"] in list("01234") and rows["7_left.png"]["error"] == ""


# ---------------------------------------------------------- 3. names where they are rendered anyway


@pytest.mark.slow
def test_the_escaping_helpers_escape_every_class_of_character():
    hostile = "a|b <!-- <script> & `c` $x$ *d* _e_ [f](g) ~~h~~ i\nj"
    text = md_text(hostile)
    for char in "|<>&`$*_[]~":
        assert re.search(rf"(?<!\\){re.escape(char)}", text) is None, char
    assert "\n" not in text and unescaped_pipes(text) == 0
    assert md_text("C:\\x") == "C:\\\\x"  # a backslash is escaped too: it cannot escape what follows
    prose = md_prose("run `retinopathy weights`; copy to $HOME/$x$ <!-- a|b")
    assert "`retinopathy weights`" in prose  # the sentence's own code span is kept
    assert "\\$HOME/\\$x\\$ \\<!-- a\\|b" in prose
    assert md_code("exp-1") == "`exp-1`"
    assert md_code("a`b") == "``a`b``" and md_code("``x") == "``` ``x ```"  # no backtick ends it early
    assert md_code("a|b") == "a\\|b"  # never a code span GitHub would split at |
    for title in MARKUP:
        with plain_text():
            plt_figure(title).savefig(io.BytesIO(), format="png")  # drawn as given
    with pytest.raises(ValueError):  # without it, matplotlib's mathtext fails on a name
        plt_figure("$\\frac{1}$").savefig(io.BytesIO(), format="png")


def plt_figure(title: str):
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots()
    ax.set_title(title)
    ax.legend(handles=ax.plot([0, 1], label=title))
    plt.close(fig)
    return fig


@pytest.mark.slow
def test_the_report_escapes_a_folder_and_a_reason_that_carry_markup(tmp_path, capsys):
    from test_report import write_metrics

    metrics = write_metrics(tmp_path, skip=("pretrained",))
    folder = "data/$\\frac{1}$ <!-- a|b `c`"
    trained = read_info(metrics / "scratch.info.json", "scratch")
    write_info(
        metrics / "scratch.info.json",
        dataclasses.replace(trained, data=folder, synthetic=False, weights="random <b>|init</b>"),
    )
    write_info(
        metrics / "pretrained.info.json",
        Skipped(
            model="resnet18",
            init="pretrained",
            reason=f"no weights at {folder}/$x$.pth",
            fix="copy them into $TORCH_HOME/$y$ <!-- or run `retinopathy weights`",
        ),
    )
    out = tmp_path / "plots"
    status, err = run(capsys, "report", "--metrics", str(metrics), "--out", str(out))
    assert status == 0, err  # was: mathtext's ValueError from the figures' titles
    text = (out / "report.md").read_text()
    check_markup(text)
    assert "Data: `data/$\\frac{1}$ <!-- a|b `c``" not in text
    assert "Data: data/\\$\\\\frac{1}\\$ \\<!-- a\\|b \\`c\\`." in text  # a | rules out a code span
    assert "run `retinopathy weights`" in text  # the reason's own code span
    check_tables(text)
    for name in ("accuracy.png", "best_accuracy.png", "confusion_scratch.png", "confusion_pretrained.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG"


def test_compare_escapes_experiment_names_in_its_tables_and_draws_them_as_text(tmp_path, monkeypatch):
    from matplotlib.text import Text

    from retinopathy.reporting import figures
    from retinopathy.reporting.comparison import render
    from retinopathy.reporting.experiments import Experiment
    from retinopathy.reporting.results import Arm
    from test_report import SKIPPED, _trained

    def experiment(name: str, seed: int) -> Experiment:
        import pandas as pd

        history = pd.DataFrame(
            {"epoch": [1, 2, 3], "test_accuracy": [0.7, 0.8, 0.85], "test_kappa": [0.4, 0.6, 0.7]}
        )
        arms = {
            "scratch": Arm(
                "scratch",
                _trained("scratch", 0.85)[1],
                {"acc": 0.85, "kappa": 0.7, "bacc": 0.5, "base": 0.7, "epoch": 3},
                history=history,
            ),
            "pretrained": Arm("pretrained", SKIPPED, {}),
        }
        return Experiment(name, name, {"model": "resnet18", "train": {"seed": seed, "lr": f"{name}|x"}}, arms)

    runs = [experiment(name, seed) for seed, name in enumerate(MARKUP)]
    text = render(runs, ["train.seed", "train.lr"], [f"{md_code('a`b')} is left out: {md_prose('<!-- x')}"])
    check_tables(text)
    check_markup(text)
    assert "Compared: `<!--x`, `<script>x`, a\\|b, `` a`b` ``, `$\\frac{1}$`, `a$x$b`." in text
    drawn: list[str] = []
    saved = figures._save
    monkeypatch.setattr(
        figures,
        "_save",
        lambda fig, path: (drawn.extend(t.get_text() for t in fig.findobj(Text)), saved(fig, path)),
    )
    figures.plot_curves(
        [(e.name, arm) for e in runs for arm in e.arms.values()], "hostile", tmp_path / "compare.png"
    )
    for name in MARKUP:  # the legend shows each name as its characters
        assert f"{name}: ResNet18 scratch" in drawn
    with Image.open(tmp_path / "compare.png") as image:
        assert image.format == "PNG"


def test_explain_draws_a_skipped_arms_reason_with_math_in_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path)
    info = Layout().arm("scratch").info
    info.parent.mkdir(parents=True)
    write_info(
        info,
        Skipped(
            model="resnet18",
            init="scratch",
            reason="no weights in $\\frac{1}$/$x$",
            fix="run `retinopathy weights`",
        ),
    )
    status, err = run(capsys, "explain", "--init", "scratch")
    assert status == 0, err
    with Image.open(Layout().explanation("scratch")) as image:
        assert image.format == "PNG"


# ---------------------------------------------------------- 4. the work is bounded after every step


@pytest.mark.slow
def test_a_strip_whose_square_is_over_the_limit_is_refused_in_its_own_row_and_the_others_are_graded(
    tmp_path, capsys
):
    # 8000x500 is exactly the 4-megapixel limit, so its header passes; padded to a square it would be
    # 64 megapixels. Before, it was squared (at 40000x1000 that is 4.8 GB) and graded.
    strip(tmp_path / "strip.png", 8000, 500)
    Image.fromarray(fundus(1, 64)).save(tmp_path / "square.jpeg", quality=92)
    Image.fromarray(np.pad(fundus(2, 64), ((0, 0), (16, 16), (0, 0)))).save(tmp_path / "camera.png")
    status, err, rows = predict_rows(
        capsys, tmp_path, "strip.png", "square.jpeg", "camera.png", max_pixels=4_000_000
    )
    assert status == 1 and "1 of 3 images could not be graded" in err
    error = rows["strip.png"]["error"]
    assert rows["strip.png"]["grade"] == "" and str(tmp_path / "strip.png") in error
    assert re.search(r"padding its (\d{4})x\d+ fundus to a square would make \1x\1, 6\d megapixels", error)
    assert "over the limit of 4" in error and "data.max_pixels" in error
    for name in ("square.jpeg", "camera.png"):  # the other rows keep their grades
        assert rows[name]["grade"] in list("01234") and rows[name]["error"] == ""


@pytest.mark.slow
def test_import_kaggle_refuses_a_strip_and_a_size_over_the_maximum_before_writing_anything(tmp_path, capsys):
    images = tmp_path / "train"
    images.mkdir()
    names = [f"{patient}_{eye}" for patient in range(1, 4) for eye in ("left", "right")]
    for seed, name in enumerate(names[1:]):
        Image.fromarray(fundus(seed, 96)).save(images / f"{name}.jpeg", quality=90)
    # 20 megapixels: under the ceiling that holds where no params give a limit; its square is 400.
    strip(images / "strip.png", 20000, 1000).rename(images / f"{names[0]}.jpeg")
    labels = tmp_path / "trainLabels.csv"
    labels.write_text("image,level\n" + "".join(f"{name},{i % 2}\n" for i, name in enumerate(names)))
    out = tmp_path / "course"
    status, err = run(
        capsys,
        "import-kaggle",
        "--labels",
        str(labels),
        "--images",
        str(images),
        "--out",
        str(out),
        "--test-fraction",
        "0.5",
        "--seed",
        "0",
        "--size",
        "64",
    )
    assert status == 2 and re.search(rf"{names[0]}\.jpeg: padding its \d{{5}}x\d+ fundus to a square", err)
    assert f"over the limit of {PIXEL_CEILING / 1e6:g}" in err and "Traceback" not in err
    assert not out.exists()
    status, err = run(
        capsys,
        "import-kaggle",
        "--labels",
        str(labels),
        "--images",
        str(images),
        "--out",
        str(out),
        "--size",
        str(MAX_IMAGE_SIZE + 1),
    )
    assert status == 2 and f"--size {MAX_IMAGE_SIZE + 1}: at most {MAX_IMAGE_SIZE} px" in err
    assert not out.exists()


def _jpeg_claiming(path: Path, width: int, height: int) -> Path:
    """A small JPEG whose frame header claims ``width`` x ``height``."""
    Image.fromarray(fundus(3, 64)).save(path, quality=90)
    data = bytearray(path.read_bytes())
    start = data.index(b"\xff\xc0")  # SOF0: length (2 bytes), precision (1), height (2), width (2)
    data[start + 5 : start + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    path.write_bytes(bytes(data))
    return path


def test_the_training_decode_is_bounded_without_params_too(tmp_path):
    # Training and evaluation decode the images prepare checked, with no limit of their own: a file
    # replaced since then is still refused from its header, not decoded into 2.7 GB.
    _jpeg_claiming(tmp_path / "big_left.jpeg", 30000, 30000)
    dataset = RetinopathyDataset(tmp_path, "test", None, records=[Record("big_left", 0)])
    with pytest.raises(
        RetinopathyError,
        match=r"big_left\.jpeg: 30000x30000 is 900 megapixels, over the "
        r"limit of 178\.957 \(.*decompression-bomb limit",
    ):
        dataset[0]


# -------------------------------------------------------------- 5. pickles are refused, not advised


class Payload:
    """What a hostile pickle runs when it is loaded unsafely: it creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _hostile(path: Path, fmt: str, marker: Path) -> Path:
    if fmt == "torch":
        torch.save({"model": Payload(marker), "spec": {}, "epoch": 1, "fingerprint": "x"}, path)
    else:
        path.write_bytes(pickle.dumps(Payload(marker), protocol=4))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torch", "pickle"])
@pytest.mark.parametrize("route", ["--checkpoint", "--blend", "train.weights"])
def test_a_pickle_is_refused_as_not_this_projects_file_without_advising_an_unsafe_load(
    tmp_path, monkeypatch, capsys, route, fmt
):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "ran"
    hostile = _hostile(tmp_path / "hostile.pt", fmt, marker)
    Image.fromarray(fundus(1, 64)).save(tmp_path / "1_left.jpeg")
    if route == "train.weights":
        write_params(tmp_path, train={"weights": str(hostile)})
        status, err = run(capsys, "weights", "--out", str(tmp_path / "init"))
        expected = "not a PyTorch state-dict file"
    else:
        write_params(tmp_path)
        good = fake_checkpoint(tmp_path / "best.pt")
        checkpoint = hostile if route == "--checkpoint" else good
        extra = ["--blend", str(hostile)] if route == "--blend" else []
        status, err = run(
            capsys,
            "predict",
            str(tmp_path / "1_left.jpeg"),
            "--checkpoint",
            str(checkpoint),
            *extra,
            "--out",
            str(tmp_path / "p.csv"),
        )
        expected = (
            "not a readable checkpoint written by"
            if route == "--checkpoint"
            else "not a readable blend written by"
        )
    assert status == 2 and f"{hostile}: {expected}" in err
    assert "could run any code in the file, so it was not loaded" in err
    for advice in ("weights_only", "Re-running", "torch.load", "Traceback", "trust"):
        assert advice not in err.replace("torch.save(model.state_dict(), path)", "")
    assert not marker.exists() and not (tmp_path / "p.csv").exists()
