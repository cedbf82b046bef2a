"""Label files -> records, validation, decoding and the Dataset contract."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from retinopathy.core.contract import NUM_GRADES
from retinopathy.core.errors import RetinopathyError
from retinopathy.data import images
from retinopathy.data.checks import check_images
from retinopathy.data.dataset import RetinopathyDataset
from retinopathy.data.images import decode_image
from retinopathy.data.labels import (
    SPLIT_FILES,
    Record,
    class_counts,
    image_path,
    read_course_splits,
    read_split,
)

LAB_SPLITS = Path(__file__).parents[1] / "data" / "splits" / "lab"


def write_split(root: Path, split: str, images: str | bytes, labels: str | bytes) -> None:
    """Write one split's two CSVs exactly as given (bytes are written verbatim)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, content in zip(SPLIT_FILES[split], (images, labels), strict=True):
        raw = content if isinstance(content, bytes) else content.encode()
        (root / name).write_bytes(raw)


def fundus_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth RGB image with some texture: JPEG-friendly, not constant."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    red = 128 + 100 * np.sin(xx / 9.0) * np.cos(yy / 13.0)
    green = 80 + 60 * np.cos((xx + yy) / 17.0)
    blue = 40 + 30 * np.sin(yy / 5.0)
    image = np.stack([red, green, blue], axis=-1) + rng.normal(0, 4, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def save_jpeg(path: Path, array: np.ndarray, quality: int = 95) -> Path:
    Image.fromarray(array).save(path, "JPEG", quality=quality)
    return path


def error_text(excinfo: pytest.ExceptionInfo[RetinopathyError]) -> str:
    return str(excinfo.value)


# --------------------------------------------------------------------------- real split lists


@pytest.mark.parametrize(
    ("split", "count", "counts"),
    [
        ("train", 28_100, [20656, 1955, 4210, 698, 581]),
        ("test", 7_026, [5154, 488, 1082, 175, 127]),
    ],
)
def test_real_lab_split_lists(split: str, count: int, counts: list[int]) -> None:
    records, notes = read_split(LAB_SPLITS, split)
    assert len(records) == count
    assert class_counts(records) == counts
    assert notes == []  # the committed lists are canonical: nothing to normalise
    # Every line is a record: the course template's pandas header bug dropped line 1.
    img_file, lab_file = SPLIT_FILES[split]
    first_image = (LAB_SPLITS / img_file).read_text().split("\n", 1)[0]
    first_label = (LAB_SPLITS / lab_file).read_text().split("\n", 1)[0]
    assert records[0] == Record(first_image, int(first_label))
    last_image = (LAB_SPLITS / img_file).read_text().rstrip("\n").rsplit("\n", 1)[-1]
    assert records[-1].image == last_image


def test_real_lab_splits_are_disjoint() -> None:
    splits = read_course_splits(LAB_SPLITS)
    assert (len(splits.train), len(splits.test)) == (28_100, 7_026)
    assert not {r.image for r in splits.train} & {r.image for r in splits.test}


# --------------------------------------------------------------------------- accepted inputs


def test_every_line_is_a_record_in_file_order(tmp_path: Path) -> None:
    write_split(tmp_path, "train", "10_left\n10_right\n3_left\n", "0\n4\n2\n")
    records, notes = read_split(tmp_path, "train")
    assert records == [Record("10_left", 0), Record("10_right", 4), Record("3_left", 2)]
    assert notes == []


def test_header_in_both_files_is_skipped_and_noted(tmp_path: Path) -> None:
    write_split(tmp_path, "train", "image\n1_left\n1_right\n", "level\n3\n0\n")
    records, notes = read_split(tmp_path, "train")
    assert records == [Record("1_left", 3), Record("1_right", 0)]
    assert "train_img.csv: header row 'image' skipped" in notes
    assert "train_label.csv: header row 'level' skipped" in notes


def test_unknown_image_header_is_skipped_when_the_label_file_has_one_too(tmp_path: Path) -> None:
    write_split(tmp_path, "test", "picture\n1_left\n", "diagnosis\n2\n")
    records, notes = read_split(tmp_path, "test")
    assert records == [Record("1_left", 2)]
    assert "test_img.csv: header row 'picture' skipped" in notes


@pytest.mark.parametrize(
    ("images", "labels", "expected", "note"),
    [
        pytest.param(
            "1_left\n1_right\n",
            "label\n1\n2\n",
            [("1_left", 1), ("1_right", 2)],
            "train_label.csv: header row 'label' skipped",
            id="header-in-label-file-only",
        ),
        pytest.param(
            "id_code\n1_left\n",
            "4\n",
            [("1_left", 4)],
            "train_img.csv: header row 'id_code' skipped",
            id="known-image-header-word",
        ),
        pytest.param(
            "5_left\n 5_right ",
            "0\n1",
            [("5_left", 0), ("5_right", 1)],
            "train_img.csv: whitespace around the value stripped on 1 line(s)",
            id="no-final-newline-and-spaces",
        ),
    ],
)
def test_unambiguous_quirks_are_accepted_with_exactly_one_note(
    tmp_path: Path, images: str, labels: str, expected: list[tuple[str, int]], note: str
) -> None:
    write_split(tmp_path, "train", images, labels)
    records, notes = read_split(tmp_path, "train")
    assert records == [Record(name, label) for name, label in expected]
    assert notes == [note]


def test_image_like_first_line_is_not_taken_for_a_header(tmp_path: Path) -> None:
    # A label header plus equal lengths would make "1_left" a header only if
    # it looked like a word; it looks like an image, so this is ambiguous.
    write_split(tmp_path, "train", "1_left\n1_right\n", "level\n3\n")
    with pytest.raises(RetinopathyError) as excinfo:
        read_split(tmp_path, "train")
    assert "2 image lines" in error_text(excinfo)
    assert "1 label lines" in error_text(excinfo)


def test_bom_crlf_and_trailing_blank_lines_are_accepted_and_noted(tmp_path: Path) -> None:
    write_split(tmp_path, "test", b"\xef\xbb\xbf7_left\r\n7_right\r\n\r\n\r\n", b"\xef\xbb\xbf1\r\n0\r\n")
    records, notes = read_split(tmp_path, "test")
    assert records == [Record("7_left", 1), Record("7_right", 0)]
    assert "test_img.csv: UTF-8 BOM removed" in notes
    assert "test_label.csv: UTF-8 BOM removed" in notes
    assert "test_img.csv: CRLF line endings" in notes
    assert "test_label.csv: CRLF line endings" in notes
    assert "test_img.csv: 2 trailing blank line(s) ignored" in notes


def test_names_listed_with_jpeg_extension_are_stripped_when_all_have_it(tmp_path: Path) -> None:
    write_split(tmp_path, "train", "1_left.jpeg\n1_right.jpeg\n", "0\n1\n")
    records, notes = read_split(tmp_path, "train")
    assert [r.image for r in records] == ["1_left", "1_right"]
    assert notes == ["train_img.csv: '.jpeg' extension stripped from all 2 names"]
    assert image_path(tmp_path, records[0].image) == tmp_path / "1_left.jpeg"


# --------------------------------------------------------------------------- rejected inputs


def read_error(root: Path, split: str = "train") -> str:
    with pytest.raises(RetinopathyError) as excinfo:
        read_split(root, split)
    return error_text(excinfo)


def test_missing_csv_file(tmp_path: Path) -> None:
    (tmp_path / "train_img.csv").write_text("1_left\n")
    message = read_error(tmp_path)
    assert str(tmp_path / "train_label.csv") in message
    assert "not found" in message


def test_blank_line_in_the_middle(tmp_path: Path) -> None:
    write_split(tmp_path, "train", "1_left\n\n1_right\n", "0\n1\n")
    assert f"{tmp_path / 'train_img.csv'}:2: blank line" in read_error(tmp_path)


@pytest.mark.parametrize("bad", ["5", "-1", "2.0", "one", "3 4"])
def test_label_outside_0_4_or_not_an_integer(tmp_path: Path, bad: str) -> None:
    write_split(tmp_path, "train", "1_left\n1_right\n2_left\n", f"0\n1\n{bad}\n")
    message = read_error(tmp_path)
    assert f"{tmp_path / 'train_label.csv'}:3:" in message
    assert repr(bad) in message


def test_label_error_line_counts_the_header(tmp_path: Path) -> None:
    write_split(tmp_path, "train", "image\n1_left\n1_right\n", "level\n0\n9\n")
    assert f"{tmp_path / 'train_label.csv'}:3:" in read_error(tmp_path)


def test_different_numbers_of_lines(tmp_path: Path) -> None:
    write_split(tmp_path, "test", "1_left\n1_right\n2_left\n", "0\n1\n")
    message = read_error(tmp_path, "test")
    assert "test_img.csv has 3 image lines" in message
    assert "test_label.csv has 2 label lines" in message


def test_empty_split(tmp_path: Path) -> None:
    write_split(tmp_path, "test", "", "\n")
    message = read_error(tmp_path, "test")
    assert "test split is empty" in message


def test_duplicate_image_names_both_lines(tmp_path: Path) -> None:
    write_split(tmp_path, "train", "1_left\n2_left\n1_left\n", "0\n1\n0\n")
    message = read_error(tmp_path)
    assert f"{tmp_path / 'train_img.csv'}:3:" in message
    assert "also at line 1" in message


def test_image_in_both_splits(tmp_path: Path) -> None:
    write_split(tmp_path, "train", "1_left\n2_left\n", "0\n1\n")
    write_split(tmp_path, "test", "3_left\n2_left\n", "0\n1\n")
    with pytest.raises(RetinopathyError) as excinfo:
        read_course_splits(tmp_path)
    message = error_text(excinfo)
    assert "'2_left'" in message
    assert f"{tmp_path / 'train_img.csv'}:2" in message
    assert f"{tmp_path / 'test_img.csv'}:2" in message


def test_mixed_jpeg_extension_is_ambiguous(tmp_path: Path) -> None:
    write_split(tmp_path, "train", "1_left\n1_right.jpeg\n", "0\n1\n")
    message = read_error(tmp_path)
    assert f"{tmp_path / 'train_img.csv'}:2:" in message
    assert f"{tmp_path / 'train_img.csv'}:1:" in message


@pytest.mark.parametrize("name", ["1_left.jpg", "1_left.png", "1_left.JPEG"])
def test_other_extensions_are_rejected(tmp_path: Path, name: str) -> None:
    write_split(tmp_path, "train", f"0_left\n{name}\n", "0\n1\n")
    message = read_error(tmp_path)
    assert f"{tmp_path / 'train_img.csv'}:2:" in message
    assert "extension" in message


@pytest.mark.parametrize("line", ["1_left,0", "sub/1_left", '"1_left"', "1 left"])
def test_names_with_separators_quotes_or_spaces(tmp_path: Path, line: str) -> None:
    write_split(tmp_path, "train", f"0_left\n{line}\n", "0\n1\n")
    assert f"{tmp_path / 'train_img.csv'}:2:" in read_error(tmp_path)


def test_bare_carriage_returns(tmp_path: Path) -> None:
    write_split(tmp_path, "train", "1_left\r1_right\r", "0\r1\r")
    assert f"{tmp_path / 'train_img.csv'}:1:" in read_error(tmp_path)


def test_not_utf8(tmp_path: Path) -> None:
    write_split(tmp_path, "train", b"1_left\n\xff\xfe_right\n", b"0\n1\n")
    assert f"{tmp_path / 'train_img.csv'}:2:" in read_error(tmp_path)


def test_unknown_split_name(tmp_path: Path) -> None:
    assert "unknown split" in read_error(tmp_path, "valid")


def test_class_counts() -> None:
    records = [Record("a", 0), Record("b", 4), Record("c", 4)]
    assert class_counts(records) == [1, 0, 0, 0, 2]
    assert len(class_counts([])) == NUM_GRADES
    with pytest.raises(RetinopathyError, match="'d'"):
        class_counts([Record("d", 5)])


# --------------------------------------------------------------------------- decoding


@pytest.fixture
def course(tmp_path: Path) -> Path:
    """A 4-image course layout: train 3 (RGB JPEGs 64x48 etc.), test 1."""
    root = tmp_path / "course"
    write_split(root, "train", "1_left\n1_right\n2_left\n", "0\n3\n4\n")
    write_split(root, "test", "2_right\n", "1\n")
    for seed, name in enumerate(["1_left", "1_right", "2_left", "2_right"]):
        save_jpeg(image_path(root, name), fundus_like(48, 64, seed))
    return root


def test_decode_image_full_size_matches_pillow(tmp_path: Path) -> None:
    path = save_jpeg(tmp_path / "a.jpeg", fundus_like(40, 56))
    array = decode_image(path)
    assert array.dtype == np.uint8 and array.shape == (40, 56, 3)
    assert array.flags.writeable and array.flags.c_contiguous
    reference = np.asarray(Image.open(path).convert("RGB")).astype(np.int16)
    # libjpeg-turbo and Pillow's libjpeg may differ by rounding in the colour conversion.
    assert np.abs(array.astype(np.int16) - reference).max() <= 2


def test_decode_image_dct_scaling_is_close_to_full_decode_and_resize(tmp_path: Path) -> None:
    path = save_jpeg(tmp_path / "a.jpeg", fundus_like(256, 256))
    for size in (128, 100, 224):  # 1/2 scale, 1/2 scale + resize, 7/8 scale
        scaled = decode_image(path, size)
        assert scaled.shape == (size, size, 3) and scaled.dtype == np.uint8
        full = Image.fromarray(decode_image(path)).resize((size, size), Image.Resampling.BILINEAR)
        difference = np.abs(scaled.astype(np.int16) - np.asarray(full, dtype=np.int16))
        assert difference.mean() < 3.0


def test_decode_image_lets_the_jpeg_decoder_downscale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save_jpeg(tmp_path / "a.jpeg", fundus_like(64, 64))
    calls: list[dict] = []
    original = images.simplejpeg.decode_jpeg

    def spy(buffer: bytes, **kwargs: object) -> np.ndarray:
        calls.append(kwargs)
        return original(buffer, **kwargs)

    monkeypatch.setattr(images.simplejpeg, "decode_jpeg", spy)
    assert decode_image(path, 32).shape == (32, 32, 3)  # 1/2 scale
    assert decode_image(path, 48).shape == (48, 48, 3)  # 6/8 scale, exact
    assert decode_image(path, 40).shape == (40, 40, 3)  # 5/8 scale, exact
    assert decode_image(path, 96).shape == (96, 96, 3)  # upscaling: full decode
    assert [(call.get("min_height"), call.get("min_width")) for call in calls] == [
        (32, 32),
        (48, 48),
        (40, 40),
        (None, None),
    ]
    assert all(call.get("strict", True) for call in calls)


def test_decode_image_upscales_small_images(tmp_path: Path) -> None:
    path = save_jpeg(tmp_path / "a.jpeg", fundus_like(20, 30))
    assert decode_image(path, 64).shape == (64, 64, 3)


def non_rgb_files(root: Path) -> dict[str, Path]:
    """Grey, CMYK JPEGs and palette/RGBA PNGs, all saved under a .jpeg name."""
    rgb = Image.fromarray(fundus_like(32, 40))
    files = {}
    for kind, image, fmt in [
        ("grey", rgb.convert("L"), "JPEG"),
        ("cmyk", rgb.convert("CMYK"), "JPEG"),
        ("palette", rgb.convert("P"), "PNG"),
        ("rgba", rgb.convert("RGBA"), "PNG"),
    ]:
        files[kind] = root / f"{kind}.jpeg"
        image.save(files[kind], fmt)
    return files


@pytest.mark.parametrize("kind", ["grey", "cmyk", "palette", "rgba"])
def test_non_rgb_images_become_rgb(tmp_path: Path, kind: str) -> None:
    path = non_rgb_files(tmp_path)[kind]
    array = decode_image(path)
    assert array.shape == (32, 40, 3) and array.dtype == np.uint8
    np.testing.assert_array_equal(array, np.asarray(Image.open(path).convert("RGB")))
    if kind == "grey":
        assert (array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all()
    assert decode_image(path, 16).shape == (16, 16, 3)


def truncate(path: Path, keep: float = 0.6) -> Path:
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])
    return path


def test_truncated_jpeg_raises(tmp_path: Path) -> None:
    path = truncate(save_jpeg(tmp_path / "a.jpeg", fundus_like(64, 64)))
    with pytest.raises(RetinopathyError, match="a.jpeg: cannot decode"):
        decode_image(path)
    with pytest.raises(RetinopathyError, match="cannot decode"):
        decode_image(path, 16)  # DCT-scaled decoding still reads every coefficient


def test_jpeg_missing_only_its_end_marker_raises(tmp_path: Path) -> None:
    path = save_jpeg(tmp_path / "a.jpeg", fundus_like(64, 64))
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(RetinopathyError, match="cannot decode"):
        decode_image(path)


def test_truncated_png_raises(tmp_path: Path) -> None:
    path = tmp_path / "a.jpeg"
    Image.fromarray(fundus_like(64, 64)).save(path, "PNG")
    with pytest.raises(RetinopathyError, match="cannot decode"):
        decode_image(truncate(path))


def test_load_truncated_images_global_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.jpeg"
    Image.fromarray(fundus_like(64, 64)).save(path, "PNG")
    truncate(path)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RetinopathyError, match="LOAD_TRUNCATED_IMAGES"):
        decode_image(path)


def test_not_an_image_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "text.jpeg").write_text("not an image")
    with pytest.raises(RetinopathyError, match="text.jpeg: cannot decode"):
        decode_image(tmp_path / "text.jpeg")
    with pytest.raises(RetinopathyError, match="nothing.jpeg: image file not found"):
        decode_image(tmp_path / "nothing.jpeg")


def test_decode_path_has_no_float64(tmp_path: Path) -> None:
    # np.asarray(img) / 255 (the lab's loader) makes float64; nothing here may.
    path = save_jpeg(tmp_path / "a.jpeg", fundus_like(64, 64))
    assert decode_image(path, 20).dtype == np.uint8
    dataset = RetinopathyDataset(tmp_path, "train", 20, records=[Record("a", 0)])
    assert dataset[0][0].dtype == torch.float32


# --------------------------------------------------------------------------- check_images


def test_check_images_accepts_good_images_and_returns_each_ones_facts(course: Path) -> None:
    splits = read_course_splits(course)
    records = splits.train + splits.test
    facts = check_images(course, records)
    # One fact per record, in the records' order: prepare's duplicate and size checks index them so.
    expected = [
        (hashlib.sha256(image_path(course, r.image).read_bytes()).hexdigest(), 64, 48) for r in records
    ]
    assert [(f.sha256, f.width, f.height) for f in facts] == expected
    assert check_images(course, records, workers=2) == facts  # threads change the speed only


def test_check_images_names_the_file_and_the_csv_line(course: Path) -> None:
    truncate(image_path(course, "1_right"))
    image_path(course, "2_right").unlink()
    splits = read_course_splits(course)
    with pytest.raises(RetinopathyError) as excinfo:
        check_images(course, splits.train + splits.test, workers=2)
    message = error_text(excinfo)
    assert message.startswith("2 of 4 images cannot be used")
    assert f"{course / 'train_img.csv'}:2: '1_right'" in message
    assert str(course / "1_right.jpeg") in message and "cannot decode" in message
    assert f"{course / 'test_img.csv'}:1: '2_right'" in message
    assert f"{course / '2_right.jpeg'}: image file not found" in message


def test_check_images_unreadable_file(course: Path) -> None:
    path = image_path(course, "2_left")
    path.unlink()
    path.mkdir()  # exists, cannot be read as a file (chmod does not stop root)
    with pytest.raises(RetinopathyError, match="2_left.jpeg: is a folder, not a regular file"):
        check_images(course, [Record("2_left", 4)])


def test_check_images_with_records_not_in_the_csvs(course: Path) -> None:
    with pytest.raises(RetinopathyError, match="not listed in the split CSVs"):
        check_images(course, [Record("9_left", 0)])


# --------------------------------------------------------------------------- dataset


def test_dataset_float_contract(course: Path) -> None:
    dataset = RetinopathyDataset(course, "train")
    assert len(dataset) == 3
    assert dataset.labels == [0, 3, 4]
    assert dataset.records[1] == Record("1_right", 3)
    image, label = dataset[1]
    assert type(label) is int and label == 3
    assert image.dtype == torch.float32 and image.shape == (3, 48, 64)
    assert image.min() >= 0.0 and image.max() <= 1.0
    pixels = decode_image(image_path(course, "1_right"))
    expected = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(image, expected, rtol=0, atol=0)


def test_dataset_uint8_matches_float_times_255(course: Path) -> None:
    as_float = RetinopathyDataset(course, "test", 32)
    as_uint8 = RetinopathyDataset(course, "test", 32, dtype=torch.uint8)
    raw, label = as_uint8[0]
    assert raw.dtype == torch.uint8 and raw.shape == (3, 32, 32) and label == 1
    scaled, _ = as_float[0]
    assert torch.equal((scaled * 255).round().to(torch.uint8), raw)
    assert torch.equal(raw.float().div(255), scaled)


def test_dataset_image_size_resizes(course: Path) -> None:
    image, _ = RetinopathyDataset(course, "train", image_size=24)[0]
    assert image.shape == (3, 24, 24)


def test_dataset_uses_given_records(course: Path) -> None:
    records = [Record("2_right", 1), Record("1_left", 0)]
    dataset = RetinopathyDataset(course, "val", records=records)
    assert dataset.records == records and dataset.labels == [1, 0]
    assert dataset[1][0].shape == (3, 48, 64)


@pytest.mark.parametrize("kind", ["grey", "cmyk", "palette", "rgba"])
def test_dataset_non_rgb_images_are_three_channel(tmp_path: Path, kind: str) -> None:
    non_rgb_files(tmp_path)
    dataset = RetinopathyDataset(tmp_path, "train", records=[Record(kind, 2)])
    image, label = dataset[0]
    assert image.shape == (3, 32, 40) and image.dtype == torch.float32 and label == 2


def test_dataset_rejects_other_dtypes(course: Path) -> None:
    with pytest.raises(ValueError, match="dtype"):
        RetinopathyDataset(course, "train", dtype=torch.float64)


def test_dataset_batches_through_a_dataloader(course: Path) -> None:
    loader = torch.utils.data.DataLoader(RetinopathyDataset(course, "train", 16), batch_size=3)
    images, labels = next(iter(loader))
    assert images.shape == (3, 3, 16, 16) and labels.tolist() == [0, 3, 4]
