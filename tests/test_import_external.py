"""`retinopathy import-external`: each public set's layout, quirks included, as a test-only course folder.

Every set here is a tiny copy the test writes itself (photographs of a bright disc on a dark border),
laid out as its users unpack it. No training: the fast tier.
"""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import subprocess_env
from retinopathy.commands.import_external import main
from retinopathy.core.contract import EXTERNAL_FORMATS, LEFT_OUT_REASONS, QUALITY_HEADER, ImportedSet
from retinopathy.core.records import RecordError, read_import_summary
from retinopathy.data.convert import convert_photo
from retinopathy.data.external.formats import READERS
from retinopathy.data.images import decode_image
from retinopathy.data.labels import eye_of, image_path, parse_split, patient_of

SIZE = 32


def photograph(path: Path, seed: int = 0, width: int = 90, height: int = 60) -> Path:
    """A fake fundus photograph: a bright textured disc on a dark, slightly noisy border."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    inside = np.hypot(xx - width / 2, yy - height / 2) < height * 0.4
    colour = np.array([170, 90, 40]) + rng.integers(-30, 30, (height, width, 3))
    pixels = np.where(inside[..., None], colour, rng.integers(0, 5, (height, width, 3))).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, "PNG" if path.suffix.lower() == ".png" else "JPEG")
    return path


def write(path: Path, text: str, crlf: bool = False, bom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.replace("\n", "\r\n") if crlf else text
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data.encode())
    return path


# ----------------------------------------------------------------------------- the sets, as unpacked


def aptos(root: Path) -> Path:
    write(
        root / "train.csv",
        "id_code,diagnosis\n000c1434d8d7,0\n001639a390f0,4\n0024cdab0c1e,1\n002c21358ce6,2\n",
        crlf=True,
        bom=True,
    )
    for number, name in enumerate(("000c1434d8d7", "001639a390f0", "0024cdab0c1e", "002c21358ce6")):
        photograph(root / "train_images" / f"{name}.png", number)
    photograph(root / "train_images/0ffffffffff0.png", 9)  # a file train.csv does not list
    write(root / "test.csv", "id_code\n0005cfc8afb6\n003f0afdcd15\n")
    photograph(root / "test_images/0005cfc8afb6.png", 10)  # the other test image was not downloaded
    return root


def messidor(root: Path) -> Path:
    images = root / "IMAGES"
    for number, file in enumerate(
        (
            "20051020_43808_0100_PP.png",
            "20051020_43832_0100_PP.png",
            "IM000001.JPG",
            "IM000002.JPG",
            "20051021_10000_0100_PP.png",
            "20051021_10001_0100_PP.png",
            "20060101_00001_0100_PP.png",
        )
    ):
        photograph(images / file, number)
    write(
        root / "messidor-2.csv",
        "left;right \n20051020_43808_0100_PP.png;20051020_43832_0100_PP.png\n"
        "IM000001.JPG;IM000002.JPG\n20051021_10000_0100_PP.png;20051021_10001_0100_PP.png\n",
        crlf=True,
    )
    # IM000002 graded as .jpg (the file is .JPG); 10000 ungradable; 10001 without a grade row;
    # 00001 in no exam
    write(
        root / "messidor_data.csv",
        "image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable\n"
        "20051020_43808_0100_PP.png,0,0,1\n20051020_43832_0100_PP.png,2,1,1\nIM000001.JPG,3,1,1\n"
        "IM000002.jpg,1,0,1\n20051021_10000_0100_PP.png,,,0\n20060101_00001_0100_PP.png,4,0,1\n",
    )
    return root


IDRID_HEADER = "Image name,Retinopathy grade,Risk of macular edema ,,,\n"


def idrid(root: Path) -> Path:
    truth = root / "2. Groundtruths"
    write(
        truth / "a. IDRiD_Disease Grading_Training Labels.csv",
        IDRID_HEADER + "IDRiD_001,2,2,,,\nIDRiD_002,0,0,,,\n,,,,,\n",
        crlf=True,
    )
    write(
        truth / "b. IDRiD_Disease Grading_Testing Labels.csv", IDRID_HEADER + "IDRiD_001,4,1,,,\n", crlf=True
    )
    photograph(root / "1. Original Images/a. Training Set/IDRiD_001.jpg", 1)
    photograph(root / "1. Original Images/a. Training Set/IDRiD_002.jpg", 2)
    photograph(root / "1. Original Images/b. Testing Set/IDRiD_001.jpg", 3)  # another photograph, same name
    return root


def ddr(root: Path) -> Path:
    grading = root / "DR_grading"
    for split, lines in {
        "train": ["007-0004-000.jpg 0", "007-0005-000.jpg 5"],
        "valid": ["20170413102628830.jpg 3"],
        "test": ["007-0099-000.jpg 2"],
    }.items():
        write(grading / f"{split}.txt", "".join(f"{line}\n" for line in lines))
        for number, line in enumerate(lines):
            photograph(grading / split / line.split()[0], number)
    return root


DEEPDRID_HEADER = (
    "patient_id,image_id,image_path,Overall quality,left_eye_DR_Level,right_eye_DR_Level,"
    "patient_DR_Level,Clarity,Field definition,Artifact\n"
)


def deepdrid(root: Path) -> Path:
    part = root / "regular_fundus_images"
    training = [  # patient, image id, quality, left, right; 2_r3 is graded in the left column (as patient 56)
        ("1", "1_l1", "1", "2", ""),
        ("1", "1_l2", "1", "2", ""),
        ("1", "1_r1", "0", "", "1"),
        ("1", "1_r2", "0", "", "1"),
        ("2", "2_l1", "1", "0", ""),
        ("2", "2_r3", "1", "0", ""),
    ]
    validation = [("3", "3_l1", "1", "4", ""), ("3", "3_r1", "1", "", "3")]
    for folder, rows in (("regular-fundus-training", training), ("regular-fundus-validation", validation)):
        lines = [
            f"{p},{i},\\{folder}\\{p}\\{i}.jpg,{q},{left},{right},{max(left, right)},8,8,0\n"
            for p, i, q, left, right in rows
        ]
        write(part / folder / f"{folder}.csv", DEEPDRID_HEADER + "".join(lines))
        for number, (patient, image, *_) in enumerate(rows):
            photograph(part / folder / "Images" / patient / f"{image}.jpg", number)
    write(part / "Online-Challenge1&2-Evaluation/Challenge1_upload.csv", "image_id,DR_Level\n4_l1,\n4_r1,\n")
    photograph(part / "Online-Challenge1&2-Evaluation/Images/4/4_l1.jpg")
    return root


def eyepacs(root: Path) -> Path:
    write(
        root / "retinopathy_solution.csv",
        "image,level,Usage\n1_left,0,Private\n1_right,2,Private\n3_left,1,Public\n",
    )
    for number, name in enumerate(("1_left", "1_right", "3_left", "5_left")):  # 5_left is not in the solution
        photograph(root / "test" / f"{name}.jpeg", number)
    return root


SETS = {
    "aptos2019": aptos,
    "messidor2": messidor,
    "idrid": idrid,
    "ddr": ddr,
    "deepdrid": deepdrid,
    "eyepacs": eyepacs,
}

# format -> (test names in order, grades, left out per reason, patients, eye pairs)
EXPECTED = {
    "aptos2019": (
        ["000c1434d8d7", "001639a390f0", "0024cdab0c1e", "002c21358ce6"],
        [0, 4, 1, 2],
        {"ungradable": 0, "unlabelled": 3, "missing file": 0},
        None,
        None,
    ),
    "messidor2": (
        ["exam0001_left", "exam0001_right", "exam0002_left", "exam0002_right", "20060101_00001_0100_PP"],
        [0, 2, 3, 1, 4],
        {"ungradable": 1, "unlabelled": 1, "missing file": 0},
        3,
        2,
    ),
    "idrid": (
        ["train_IDRiD_001", "train_IDRiD_002", "test_IDRiD_001"],
        [2, 0, 4],
        {"ungradable": 0, "unlabelled": 0, "missing file": 0},
        None,
        None,
    ),
    "ddr": (
        ["007-0004-000", "20170413102628830", "007-0099-000"],
        [0, 3, 2],
        {"ungradable": 1, "unlabelled": 0, "missing file": 0},
        None,
        None,
    ),
    "deepdrid": (
        ["1_left_1", "1_left_2", "2_left_1", "2_left_3", "3_left_1", "3_right_1"],
        [2, 2, 0, 0, 4, 3],
        {"ungradable": 2, "unlabelled": 2, "missing file": 0},
        3,
        1,
    ),
    "eyepacs": (
        ["1_left", "1_right", "3_left"],
        [0, 2, 1],
        {"ungradable": 0, "unlabelled": 1, "missing file": 0},
        2,
        1,
    ),
}


def run(capsys, *args: str) -> tuple[int, str, str]:
    """``retinopathy import-external ARGS`` in-process, as the CLI runs it (errors: exit 2, no traceback)."""
    from retinopathy import cli

    code = cli.main(["import-external", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))


def leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


# ----------------------------------------------------------------------------- each format


@pytest.mark.parametrize("format", EXTERNAL_FORMATS)
def test_each_format_imports_as_its_users_unpack_it(tmp_path, capsys, format):
    root = SETS[format](tmp_path / "set")
    out = tmp_path / "imported"
    assert main([format, "--root", str(root), "--out", str(out), "--size", str(SIZE)]) == 0
    names, grades, left_out, patients, pairs = EXPECTED[format]

    test = parse_split(out, "test")  # what the pipeline reads
    assert [r.image for r in test.records] == names and [r.label for r in test.records] == grades
    for name in names:
        assert decode_image(image_path(out, name)).shape == (SIZE, SIZE, 3)
    summary = read_import_summary(ImportedSet(out).summary)
    assert (summary.format, summary.size, summary.images) == (format, SIZE, len(names))
    assert summary.grades == [grades.count(g) for g in range(5)]
    assert summary.left_out == left_out and list(summary.left_out) == list(LEFT_OUT_REASONS)
    assert (summary.patients, summary.eye_pairs) == (patients, pairs)
    for file, digest in summary.label_files.items():
        assert (root / file).is_file() and len(digest) == 64
    # Every photograph of the set is accounted for, once: written to the test split, written as
    # ungradable, or left out with its reason.
    sources = rows(ImportedSet(out).sources)
    statuses = [row["status"] for row in sources]
    assert statuses.count("test") == len(names)
    assert {reason: statuses.count(reason) for reason in LEFT_OUT_REASONS} == left_out
    written = {row["image"] for row in sources if row["image"]}
    assert written == {path.stem for path in out.glob("*.jpeg")}
    assert all(
        (root / row["source"]).is_file() and len(row["sha256"]) == 64 for row in sources if row["image"]
    )
    stdout = capsys.readouterr().out
    assert f"wrote {out}: {len(names)} test images" in stdout and "unlabelled" in stdout
    assert leftovers(tmp_path) == []


def test_one_reader_per_format_of_the_contract():
    assert tuple(READERS) == EXTERNAL_FORMATS


def test_images_are_converted_exactly_as_import_kaggle_converts(tmp_path):
    root = aptos(tmp_path / "set")
    main(["aptos2019", "--root", str(root), "--out", str(tmp_path / "out"), "--size", str(SIZE)])
    kaggle = tmp_path / "kaggle.jpeg"
    convert_photo((root / "train_images/000c1434d8d7.png", kaggle, SIZE))  # import-kaggle's function
    assert (tmp_path / "out/000c1434d8d7.jpeg").read_bytes() == kaggle.read_bytes()
    pixels = decode_image(kaggle)
    assert (
        pixels[SIZE // 2].max() > 100 and pixels[0, 0].max() < 30
    )  # cropped and squared: disc in, corners dark


def test_messidor2_exams_give_patients_and_eyes_dme_and_quality(tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        main(["messidor2", "--root", str(messidor(tmp_path / "set")), "--out", str(out), "--size", "16"]) == 0
    )
    files = ImportedSet(out)
    assert lines(files.dme) == ["0", "1", "1", "0", "0"]  # adjudicated_dme, one line per test image
    assert [(patient_of(n), eye_of(n)) for n in lines(out / "test_img.csv")] == [
        ("exam0001", "left"),
        ("exam0001", "right"),
        ("exam0002", "left"),
        ("exam0002", "right"),
        ("20060101_00001_0100_PP", None),
    ]
    quality = lines(files.quality)
    assert quality[0] == ",".join(QUALITY_HEADER) == ",image,quality,DR_grade"
    assert quality[1:] == [
        "0,exam0001_left.jpeg,0,0",
        "1,exam0001_right.jpeg,0,2",
        "2,exam0002_left.jpeg,0,3",
        "3,exam0002_right.jpeg,0,1",
        "4,exam0003_left.jpeg,2,",
        "5,20060101_00001_0100_PP.jpeg,0,4",
    ]
    assert image_path(out, "exam0003_left").is_file()  # the ungradable photograph is written, not listed
    summary = read_import_summary(files.summary)
    assert summary.referable_dme == 2 and "adjudicated_dme" in summary.dme_definition
    assert summary.quality == {"Good": 5, "Usable": 0, "Reject": 1}
    assert summary.left_out_examples["unlabelled"] == ["IMAGES/20051021_10001_0100_PP.png"]
    assert any("another case" in text for text in summary.notes)  # IM000002.jpg found as .JPG
    source = {row["image"]: row["source"] for row in rows(files.sources)}
    assert source["exam0002_right"] == "IMAGES/IM000002.JPG"


def test_idrid_repeated_names_both_survive_and_risk_2_is_referable_dme(tmp_path, capsys):
    root, out = idrid(tmp_path / "B. Disease Grading"), tmp_path / "out"
    assert main(["idrid", "--root", str(root), "--out", str(out), "--size", "16"]) == 0
    assert lines(ImportedSet(out).dme) == ["1", "0", "0"]  # risks 2, 0, 1
    assert (
        decode_image(image_path(out, "train_IDRiD_001")).tolist()
        != decode_image(image_path(out, "test_IDRiD_001")).tolist()
    )
    summary = read_import_summary(ImportedSet(out).summary)
    assert summary.splits == {"train": 2, "test": 1} and summary.quality is None
    assert any("empty column(s) after the header" in text for text in summary.notes)
    assert any("CRLF" in text for text in summary.notes) and any(
        "blank row" in text for text in summary.notes
    )
    assert "Risk of macular edema = 2" in summary.dme_definition
    assert not ImportedSet(out).quality.exists()


def test_ddr_grade_5_is_ungradable_and_written_for_the_quality_file(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["ddr", "--root", str(ddr(tmp_path / "DDR-dataset")), "--out", str(out), "--size", "16"]) == 0
    assert lines(ImportedSet(out).quality)[1:] == [
        "0,007-0004-000.jpeg,0,0",
        "1,007-0005-000.jpeg,2,",
        "2,20170413102628830.jpeg,0,3",
        "3,007-0099-000.jpeg,0,2",
    ]
    assert image_path(out, "007-0005-000").is_file() and "007-0005-000" not in lines(out / "test_img.csv")
    assert not ImportedSet(out).dme.exists()
    assert read_import_summary(ImportedSet(out).summary).splits == {"train": 1, "valid": 1, "test": 1}


def test_deepdrid_two_views_of_an_eye_stay_one_patient_and_one_eye(tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        main(["deepdrid", "--root", str(deepdrid(tmp_path / "DeepDRiD")), "--out", str(out), "--size", "16"])
        == 0
    )
    names = lines(out / "test_img.csv")
    assert {(patient_of(n), eye_of(n)) for n in names if n.startswith("1_")} == {("1", "left")}
    assert (patient_of("1_right_2"), eye_of("1_right_2")) == ("1", "right")
    # Overall quality 0: written for quality.csv as Reject, with no DR grade, and not in the test split.
    quality = {row["image"]: (row["quality"], row["DR_grade"]) for row in rows(ImportedSet(out).quality)}
    assert quality["1_right_1.jpeg"] == ("2", "") and quality["1_left_1.jpeg"] == ("0", "2")
    summary = read_import_summary(ImportedSet(out).summary)
    assert any("2_r3" in text and "column's eye" in text for text in summary.notes)
    assert summary.splits == {"training": 4, "validation": 2}
    assert summary.left_out_examples["unlabelled"] == [
        "regular_fundus_images/Online-Challenge1&2-Evaluation/Images/4/4_l1.jpg",
        "regular_fundus_images/Online-Challenge1&2-Evaluation/Images/4/4_r1.jpg",
    ]


def test_eyepacs_keeps_its_names_patients_and_leaderboard_split(tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        main(["eyepacs", "--root", str(eyepacs(tmp_path / "kaggle")), "--out", str(out), "--size", "16"]) == 0
    )
    summary = read_import_summary(ImportedSet(out).summary)
    assert summary.splits == {"Private": 2, "Public": 1}
    assert summary.left_out_examples["unlabelled"] == ["test/5_left.jpeg"]


def test_eyepacs_and_view_names_parse_into_one_patient_and_eye():
    """The one definition of a name's patient and eye: EyePACS's as before, DeepDRiD's views added."""
    assert [(patient_of(n), eye_of(n)) for n in ("10_left", "10_right", "10_left.jpeg", "a_b_right")] == [
        ("10", "left"),
        ("10", "right"),
        ("10", "left"),
        ("a_b", "right"),
    ]
    assert [(patient_of(n), eye_of(n)) for n in ("10_left_1", "10_left_2", "7_right_12")] == [
        ("10", "left"),
        ("10", "left"),
        ("7", "right"),
    ]
    assert [
        (patient_of(n), eye_of(n)) for n in ("000c1434d8d7", "train_IDRiD_001", "10_left_x", "10_lefty")
    ] == [("000c1434d8d7", None), ("train_IDRiD_001", None), ("10_left_x", None), ("10_lefty", None)]


# ----------------------------------------------------------------------------- what it refuses


def test_a_second_run_refuses_to_overwrite_and_changes_nothing(tmp_path, capsys):
    root, out = aptos(tmp_path / "set"), tmp_path / "out"
    assert run(capsys, "aptos2019", "--root", root, "--out", out, "--size", SIZE)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = run(capsys, "aptos2019", "--root", root, "--out", out, "--size", SIZE)
    assert code == 2 and "Traceback" not in err
    assert f"{out}: already exists and is not empty" in err and "choose another --out" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert leftovers(tmp_path) == []


def break_aptos(root: Path, text: str) -> None:
    write(root / "train.csv", text)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("grade", "train.csv:3: label '7' is not an integer grade 0-4"),
        ("duplicate", "train.csv:4: id_code '000c1434d8d7' is listed twice, also at line 2"),
        ("header", "train.csv:1: expected the column(s) 'diagnosis' in the header, found 'id_code', 'level'"),
        (
            "markup",
            "train.csv:2: the image id '<b>x</b>' cannot name an output image (it contains '<')",
        ),
        (
            "eye",
            "train.csv:2: the name '7_left' would read as the left eye of patient '7', which the set",
        ),
        ("columns", "train.csv:2: 3 values but the header (line 1) names 2 columns"),
    ],
)
def test_bad_labels_are_refused_with_file_and_line_and_nothing_is_written(tmp_path, capsys, case, expected):
    root, out = aptos(tmp_path / "set"), tmp_path / "out"
    text = {
        "grade": "id_code,diagnosis\n000c1434d8d7,0\n001639a390f0,7\n",
        "duplicate": "id_code,diagnosis\n000c1434d8d7,0\n001639a390f0,1\n000c1434d8d7,2\n",
        "header": "id_code,level\n000c1434d8d7,0\n",
        "markup": "id_code,diagnosis\n<b>x</b>,0\n",
        "eye": "id_code,diagnosis\n7_left,0\n",
        "columns": "id_code,diagnosis\n000c1434d8d7,0,1\n",
    }[case]
    break_aptos(root, text)
    code, out_text, err = run(capsys, "aptos2019", "--root", root, "--out", out)
    assert code == 2 and "Traceback" not in err
    assert expected in err, err
    assert str(root / "train.csv") in err
    assert not out.exists() and leftovers(tmp_path) == [] and out_text == ""


@pytest.mark.parametrize(
    "format, layout, broken, expected",
    [
        (
            "idrid",
            idrid,
            ("2. Groundtruths/b. IDRiD_Disease Grading_Testing Labels.csv", IDRID_HEADER + "IDRiD_001,4,3\n"),
            "Testing Labels.csv:2: Risk of macular edema '3' is not one of '0', '1', '2'",
        ),
        (
            "idrid",
            idrid,
            ("2. Groundtruths/b. IDRiD_Disease Grading_Testing Labels.csv", IDRID_HEADER + "IDRiD_001,5,1\n"),
            "Testing Labels.csv:2: label '5' is not an integer grade 0-4",
        ),
        (
            "ddr",
            ddr,
            ("DR_grading/valid.txt", "20170413102628830.jpg 6\n"),
            "valid.txt:1: label '6' is not an integer",
        ),
        (
            "ddr",
            ddr,
            ("DR_grading/test.txt", "007-0004-000.jpg 1\n"),
            "test.txt:1: '007-0004-000.jpg' has the name '007-0004-000' of the photograph at",
        ),
        (
            "messidor2",
            messidor,
            ("messidor-2.csv", "left;right\na.png;b.png\nc.png;a.png\n"),
            "messidor-2.csv:3: 'a.png' is in two exams, also at",
        ),
        (
            "messidor2",
            messidor,
            (
                "messidor_data.csv",
                "image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable\nIM000001.JPG,2,,1\n",
            ),
            "messidor_data.csv:2: adjudicated_dme '' is not one of '0', '1'",
        ),
        (
            "deepdrid",
            deepdrid,
            (
                "regular_fundus_images/regular-fundus-validation/regular-fundus-validation.csv",
                DEEPDRID_HEADER + "3,3_l1,x,2,4,,4,8,8,0\n",
            ),
            "regular-fundus-validation.csv:2: Overall quality '2' is not one of '0', '1'",
        ),
        (
            "eyepacs",
            eyepacs,
            ("retinopathy_solution.csv", "image,level,Usage\n1_left,-1,Public\n"),
            "retinopathy_solution.csv:2: label '-1' is not an integer grade 0-4",
        ),
    ],
)
def test_each_format_refuses_its_bad_labels(tmp_path, capsys, format, layout, broken, expected):
    root = layout(tmp_path / "set")
    write(root / broken[0], broken[1])
    code, _, err = run(capsys, format, "--root", root, "--out", tmp_path / "out")
    assert code == 2 and expected in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "format, layout, label_file",
    [
        ("aptos2019", aptos, "train.csv"),
        ("messidor2", messidor, "messidor_data.csv"),
        ("messidor2", messidor, "messidor-2.csv"),
        ("idrid", idrid, "2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv"),
        ("ddr", ddr, "DR_grading/valid.txt"),
        ("deepdrid", deepdrid, "regular_fundus_images/regular-fundus-training/regular-fundus-training.csv"),
        ("eyepacs", eyepacs, "retinopathy_solution.csv"),
    ],
)
def test_a_missing_label_file_is_named_with_where_to_get_it(tmp_path, capsys, format, layout, label_file):
    root = layout(tmp_path / "set")
    (root / label_file).unlink()
    code, _, err = run(capsys, format, "--root", root, "--out", tmp_path / "out")
    assert (
        code == 2 and f"{root / label_file}: file not found; it should hold the " in err and "--root" in err
    ), err
    assert not (tmp_path / "out").exists()


def test_messidor2_without_krause_grades_says_where_they_are(tmp_path, capsys):
    root = messidor(tmp_path / "set")
    (root / "messidor_data.csv").unlink()
    _, _, err = run(capsys, "messidor2", "--root", root, "--out", tmp_path / "out")
    assert "messidor2-dr-grades" in err and "Krause" in err


def test_missing_images_are_counted_and_named_then_left_out_only_when_asked(tmp_path, capsys):
    root, out = aptos(tmp_path / "set"), tmp_path / "out"
    (root / "train_images/001639a390f0.png").unlink()
    (root / "train_images/002c21358ce6.png").unlink()
    code, _, err = run(capsys, "aptos2019", "--root", root, "--out", out)
    assert code == 2 and f"2 listed image(s) missing under {root}:" in err
    assert f"{root / 'train.csv'}:3: train_images/001639a390f0.png" in err
    assert f"{root / 'train.csv'}:5: train_images/002c21358ce6.png" in err and "--allow-missing" in err
    assert not out.exists()

    code, _, err = run(capsys, "aptos2019", "--root", root, "--out", out, "--size", SIZE, "--allow-missing")
    assert code == 0 and "2 listed image(s) missing" in err
    summary = read_import_summary(ImportedSet(out).summary)
    assert summary.images == 2 and summary.left_out["missing file"] == 2
    assert summary.left_out_examples["missing file"] == [
        "train_images/001639a390f0.png",
        "train_images/002c21358ce6.png",
    ]


def test_a_wrong_format_name_is_refused_with_the_known_ones(tmp_path, capsys):
    code, _, err = run(capsys, "messidor", "--root", tmp_path, "--out", tmp_path / "out")
    assert code == 2 and "unknown format 'messidor' (did you mean messidor2?)" in err
    assert all(format in err for format in EXTERNAL_FORMATS)
    assert not (tmp_path / "out").exists()


def test_a_photograph_that_cannot_be_decoded_leaves_no_output(tmp_path, capsys):
    root, out = ddr(tmp_path / "set"), tmp_path / "out"
    (root / "DR_grading/valid/20170413102628830.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    code, _, err = run(capsys, "ddr", "--root", root, "--out", out, "--size", "16")
    assert code == 2 and "20170413102628830.jpg: cannot decode the image" in err
    assert not out.exists() and leftovers(tmp_path) == []


def test_a_set_with_nothing_graded_is_refused(tmp_path, capsys):
    root = tmp_path / "set"
    write(root / "train.csv", "id_code,diagnosis\n")
    code, _, err = run(capsys, "aptos2019", "--root", root, "--out", tmp_path / "out")
    assert code == 2 and "no graded photograph to import" in err


def test_the_summary_is_refused_when_its_counts_do_not_add_up(tmp_path, capsys):
    out = tmp_path / "out"
    main(["eyepacs", "--root", str(eyepacs(tmp_path / "set")), "--out", str(out), "--size", "16"])
    raw = json.loads(ImportedSet(out).summary.read_text())
    raw["images"] += 1
    ImportedSet(out).summary.write_text(json.dumps(raw))
    with pytest.raises(RecordError, match="'grades' .* are not 5 counts adding up to 'images' \\(4\\)"):
        read_import_summary(ImportedSet(out).summary)


@pytest.mark.slow
def test_the_real_command_imports_a_set(tmp_path):
    root, out = eyepacs(tmp_path / "set"), tmp_path / "out"
    done = subprocess.run(
        [
            "retinopathy",
            "import-external",
            "eyepacs",
            "--root",
            str(root),
            "--out",
            str(out),
            "--size",
            "16",
            "--workers",
            "2",
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (
        f"wrote {out}: 3 test images (1 grade 0, 1 grade 1, 1 grade 2, 0 grade 3, 0 grade 4)" in done.stdout
    )
    assert "patients: 2, with both eyes: 1" in done.stdout
    assert lines(out / "test_img.csv") == ["1_left", "1_right", "3_left"]
    assert lines(out / "test_label.csv") == ["0", "2", "1"]
    usage = subprocess.run(
        ["retinopathy"], capture_output=True, text=True, env=subprocess_env(), timeout=60
    ).stdout
    assert "import-external" in usage
