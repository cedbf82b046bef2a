"""The image-quality library (issue 30): real and demo photographs gradable, each camera fault
found with its reason, the verdict monotone in a fault's strength, the reasons' vocabulary fixed.

No training: the photographs are scikit-image's real fundus photograph (CC0) and demo photos that
`retinopathy demo-data` writes, degraded by retinopathy.quality.degrade and saved as JPEG as a
camera would, then decoded the way the pipeline decodes its images.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from conftest import write_params
from retinopathy.core.config import load_params
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.schema import Invalid, parse
from retinopathy.data.fundus import fundus_pixels
from retinopathy.data.images import decode_image
from retinopathy.quality.degrade import FAULTS, defocus, flare, off_frame, overexpose
from retinopathy.quality.measures import measure
from retinopathy.quality.verdict import NO_FUNDUS, REASONS, Thresholds, Verdict, assess, judge
from retinopathy.stages import demo_data

STRENGTHS = [round(0.1 * step, 1) for step in range(11)]


def as_jpeg(pixels: np.ndarray) -> np.ndarray:
    """What a camera would store: the photograph through a quality-90 JPEG."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return np.asarray(Image.open(buffer).convert("RGB"))


def described(verdict: Verdict) -> str:
    return f"{verdict.reasons} {verdict.explain()} {verdict.measures.as_dict()}"


@pytest.fixture(scope="module")
def retina() -> np.ndarray:
    data = pytest.importorskip("skimage.data", reason="scikit-image is not installed: pip install '.[test]'")
    return data.retina()


@pytest.fixture(scope="module")
def demo_photos(tmp_path_factory) -> list[np.ndarray]:
    """Every photo of a small demo dataset written by `retinopathy demo-data` (256 px, varied), with no
    camera faults of its own (tests/test_demo_dataset.py checks the demo's faulted photos)."""
    folder = tmp_path_factory.mktemp("demo-quality")
    params = write_params(
        folder,
        demo={"seed": 3, "train_size": 10, "test_size": 10, "image_size": 256, "ungradable": 0, "usable": 0},
    )
    assert demo_data.main(["--params", str(params), "--out", str(folder / "demo")]) == 0
    paths = sorted((folder / "demo").glob("*.jpeg"))
    assert len(paths) == 20
    return [decode_image(path) for path in paths]


def test_the_real_photograph_is_gradable_at_any_resolution(retina):
    full = assess(retina)
    assert full.gradable, described(full)
    assert full.reasons == () and full.explain() == []
    # The same photograph as the course stores its images (512 px JPEG): the same measures.
    course = assess(as_jpeg(np.asarray(Image.fromarray(retina).resize((512, 512), Image.Resampling.LANCZOS))))
    assert course.gradable, described(course)
    for name, value in full.measures.as_dict().items():
        tolerance = 8.0 if name == "brightness" else 0.08
        assert value is not None and abs(value - course.measures.as_dict()[name]) < tolerance, name


def test_a_camera_frame_that_cuts_the_top_and_bottom_off_is_not_off_field(retina):
    side = retina.shape[0]
    cut = side // 10  # 10% of the diameter off the top and off the bottom, in a 3:2 frame
    frame = np.zeros((side - 2 * cut, (side - 2 * cut) * 3 // 2, 3), np.uint8)
    left = (frame.shape[1] - side) // 2
    frame[:, left : left + side] = retina[cut : side - cut]
    verdict = assess(as_jpeg(frame))
    assert verdict.gradable, described(verdict)
    assert 0.75 < verdict.measures.disc_visible < 0.95


@pytest.mark.slow
def test_every_demo_photo_is_gradable(demo_photos):
    for index, photo in enumerate(demo_photos):
        verdict = assess(photo)
        assert verdict.gradable, f"demo photo {index}: {described(verdict)}"


# The photographs the faults are tried on: the real one (at the course's 512 px), and every fifth
# demo photo.
SOURCES = ["real", "demo 0", "demo 5", "demo 10", "demo 15"]


def photograph(source: str, request) -> np.ndarray:
    """The photograph named ``source``; "real" is skipped, with its reason, without scikit-image."""
    if source == "real":
        retina = request.getfixturevalue("retina")
        return as_jpeg(np.asarray(Image.fromarray(retina).resize((512, 512), Image.Resampling.LANCZOS)))
    return request.getfixturevalue("demo_photos")[int(source.split()[1])]


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_each_fault_is_found_with_its_reason_and_a_mild_one_is_not(fault, source, request):
    photo = photograph(source, request)
    assert assess(photo).gradable
    rejected = assess(as_jpeg(fault(photo, fault.reject, seed=SOURCES.index(source))))
    assert rejected.reasons == (fault.reason,), described(rejected)
    assert not rejected.gradable and rejected.explain()[0].startswith(fault.reason)
    mild = assess(as_jpeg(fault(photo, fault.mild, seed=SOURCES.index(source))))
    assert mild.gradable, f"at {fault.mild}: {described(mild)}"


@pytest.mark.parametrize("source", SOURCES[:3])
@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_a_stronger_fault_never_makes_a_photograph_gradable_again(fault, source, request):
    photo = photograph(source, request)
    verdicts = [assess(as_jpeg(fault(photo, strength, seed=3))) for strength in STRENGTHS]
    gradable = [verdict.gradable for verdict in verdicts]
    assert gradable[0] and not gradable[-1], gradable
    first_bad = gradable.index(False)
    assert not any(gradable[first_bad:]), list(zip(STRENGTHS, gradable, strict=True))
    # From there on it is ungradable for this fault (or, for a photograph darkened to black,
    # because no fundus is left to see).
    for strength, verdict in zip(STRENGTHS[first_bad:], verdicts[first_bad:], strict=True):
        assert fault.reason in verdict.reasons or verdict.reasons == (NO_FUNDUS,), (
            strength,
            described(verdict),
        )


def test_the_reasons_are_a_fixed_vocabulary_in_a_fixed_order(demo_photos):
    assert REASONS == ("no fundus", "off-field", "dark", "overexposed", "blur", "flare")
    assert {fault.reason for fault in FAULTS.values()} == set(REASONS) - {NO_FUNDUS}
    # Two faults at once: both reasons, in the vocabulary's order, whichever came first.
    both = assess(as_jpeg(off_frame(defocus(demo_photos[1], 0.8), 0.5, seed=1)))
    assert both.reasons == ("off-field", "blur"), described(both)
    assert len(both.explain()) == 2


def test_a_black_frame_has_no_fundus_and_nothing_else_is_judged():
    verdict = assess(np.zeros((300, 400, 3), np.uint8))
    assert verdict.reasons == (NO_FUNDUS,) and not verdict.gradable
    assert verdict.measures.coverage == 0.0 and verdict.measures.focus is None
    assert verdict.explain() == ["no fundus: the disc covers 0% of the frame (at least 5% needed)"]
    # A speck of light is no fundus either.
    speck = np.zeros((256, 256, 3), np.uint8)
    speck[100:110, 100:110] = 200
    assert assess(speck).reasons == (NO_FUNDUS,)


def test_the_thresholds_decide(demo_photos):
    measures = measure(demo_photos[2])
    assert judge(measures).gradable
    assert judge(measures, Thresholds(min_focus=measures.focus + 0.01)).reasons == ("blur",)
    assert judge(measures, Thresholds(min_visible=1.0)).reasons == ("off-field",)
    assert judge(measures, Thresholds(max_brightness=measures.brightness - 1)).reasons == ("overexposed",)
    assert judge(measures, Thresholds(min_coverage=0.9)).reasons == (NO_FUNDUS,)


@pytest.mark.parametrize(
    "bad, key, word",
    [
        ({"min_focus": -0.1}, "min_focus", "not at least 0.0"),
        ({"max_flare": 1.5}, "max_flare", "not a fraction in [0, 1]"),
        ({"min_brightness": True}, "min_brightness", "true"),
        (
            {"min_brightness": 200.0, "max_brightness": 100.0},
            "min_brightness",
            "(200) must be below max_brightness (100)",
        ),
    ],
)
def test_a_bad_threshold_in_params_is_refused_by_its_key(bad, key, word):
    with pytest.raises(Invalid) as error:
        parse(Thresholds, bad, "quality.thresholds", by_hand=True)
    assert error.value.key == f"quality.thresholds.{key}"
    assert word in str(error.value)


def test_params_yaml_repeats_the_thresholds_defaults():
    """predict without a project judges with the dataclass's defaults: params.yaml must say the same."""
    params = load_params(Path(__file__).parents[1] / "params.yaml")
    assert params.quality.thresholds == Thresholds()


def test_the_faults_are_deterministic_and_leave_their_input_alone(demo_photos):
    photo = demo_photos[3]
    before = photo.copy()
    for fault in FAULTS.values():
        once, again = fault(photo, 0.5, seed=4), fault(photo, 0.5, seed=4)
        assert once.dtype == np.uint8 and once.shape == photo.shape
        assert np.array_equal(once, again), fault.name
        assert not np.array_equal(once, photo), fault.name
        assert np.array_equal(fault(photo, 0.0), photo), fault.name
    assert np.array_equal(photo, before)
    # The seed picks the direction: four seeds move the eye at least two ways.
    assert len({off_frame(photo, 0.3, seed=seed).tobytes() for seed in range(4)}) >= 2
    assert not np.array_equal(flare(photo, 0.5, seed=0), flare(photo, 0.5, seed=1))
    # Light falls on the fundus only: the black border stays as it was.
    border = ~ndimage.binary_dilation(fundus_pixels(photo), iterations=8)
    assert border.sum() > 1000
    assert np.array_equal(overexpose(photo, 0.5)[border], photo[border])
    assert np.array_equal(flare(photo, 1.0, seed=2)[border], photo[border])


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: measure(np.zeros((64, 64), np.uint8)),
            "expected an RGB uint8 array [height, width, 3], got uint8 array of shape (64, 64)",
        ),
        (lambda: measure(np.zeros((64, 64, 3), np.float32)), "got float32 array"),
        (lambda: defocus(np.zeros((64, 64, 3), np.uint8), 1.5), "defocus: strength must be a number from 0"),
        (
            lambda: off_frame(np.zeros((64, 64, 3), np.uint8), 0.5, seed=-1),
            "off_frame: seed must be an integer >= 0",
        ),
    ],
)
def test_bad_input_is_refused_with_what_to_do(call, message):
    with pytest.raises(RetinopathyError) as error:
        call()
    assert message in str(error.value)


def test_processes_judge_each_photo_as_one_process_does_in_input_order(retina, tmp_path):
    from retinopathy.quality.photos import assess_files

    small = np.asarray(Image.fromarray(retina).resize((384, 384), Image.Resampling.LANCZOS))
    faults = [None, FAULTS["defocus"], FAULTS["underexpose"], FAULTS["overexpose"], FAULTS["off_frame"]]
    paths = []
    for number, fault in enumerate(faults * 2):  # 10 photographs: several per process
        pixels = small if fault is None else fault(small, fault.reject, seed=number)
        paths.append(tmp_path / f"{number}.jpeg")
        Image.fromarray(pixels).save(paths[-1], "JPEG", quality=90)
    alone = assess_files(paths, Thresholds())
    assert [v.reasons[:1] for v in alone] == [(), *((f.reason,) for f in faults[1:])] * 2
    assert assess_files(paths, Thresholds(), workers=2) == alone
    # A photograph that cannot be decoded is named, from whichever process judged it.
    (tmp_path / "7.jpeg").write_bytes(b"not a JPEG")
    with pytest.raises(RetinopathyError, match="7.jpeg"):
        assess_files(paths, Thresholds(), workers=2)


@pytest.mark.slow  # starts two fresh processes (about a second)
def test_predicts_fresh_processes_judge_the_rest_in_order_and_pass_over_an_unreadable_file(
    retina, tmp_path, monkeypatch
):
    from retinopathy.quality import photos

    small = np.asarray(Image.fromarray(retina).resize((256, 256), Image.Resampling.LANCZOS))
    paths = []
    for number, fault in enumerate([None, FAULTS["defocus"], FAULTS["underexpose"], None, None]):
        pixels = small if fault is None else fault(small, fault.reject, seed=number)
        paths.append(tmp_path / f"{number}.jpeg")
        Image.fromarray(pixels).save(paths[-1], "JPEG", quality=90)
    paths[3].write_bytes(b"not a JPEG")  # predict's row says why; here it has no verdict
    alone = photos.assess_photos(paths, Thresholds(), 10**8)
    assert [None if v is None else v.reasons for v in alone] == [(), ("blur",), ("dark",), None, ()]
    # The first photograph judged here, the rest over two spawned processes: the same, in order.
    monkeypatch.setattr(photos, "JUDGE_HERE_S", 0.0)
    monkeypatch.setattr(photos, "SPAWN_WORTH_S", 0.0)
    spawned, in_processes = [], photos._in_processes
    monkeypatch.setattr(photos, "_in_processes", lambda *a: spawned.append(a[3]) or in_processes(*a))
    assert photos.assess_photos(paths, Thresholds(), 10**8, workers=2) == alone
    assert spawned == ["spawn"]
