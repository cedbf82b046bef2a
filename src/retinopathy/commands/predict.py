"""`retinopathy predict`: grade new photographs with a trained arm, and show where it looked.

``retinopathy predict PATH... [--arm scratch|pretrained | --checkpoint FILE]
[--out predictions.csv] [--tta flips] [--explain DIR] [--ungradable flag|withhold]
[--quality-model FILE]``

PATH is an image, a folder (every JPEG/PNG in it, sorted; an entry named like
one that is no regular file, such as a named pipe or a folder, is a row with its
reason, never opened) or a course-layout list (``*.csv``, read as `prepare`
reads ``*_img.csv``: one name per line, a header row and ``.jpeg`` on every
name accepted, the images beside it as ``<name>.jpeg``). The
model is the arm's ``best.pt`` (or ``--checkpoint``), used with the image
size, preprocessing, normalisation and head stored in it, never with the
current params.yaml's. Square images go through as training reads them;
other photographs are first cropped to the fundus and squared as
`import-kaggle` does. Grading runs in batches, on the GPU when there is one,
through the loop `evaluate` uses, so on the test split it gives the grades
`evaluate` wrote.

Patients (:data:`PATIENTS`): two photographs are one patient's only when they
are in the same folder and named ``<id>_left`` and ``<id>_right`` (the eye in
any case), or are given as ``--pair LEFT RIGHT`` (LEFT named as a left eye,
RIGHT as a right eye; refused otherwise). With both eyes of a patient among
the inputs and the arm's blend
(``models/<arm>.fuse.pt``, written by the `fuse` stage; ``--blend FILE``
with ``--checkpoint``), each eye is graded by the blend over both eyes' features,
as `fuse` grades the test split (without ``--tta``); ``--single`` grades every
photograph alone. The last column, ``source``, says which grade each row got:
``fused``, ``single-no-partner`` (a blend, but the other eye is not among the
inputs, unreadable or withheld), ``single`` (no blend) or ``withheld`` (no grade).

The CSV has one row per input, in input order: ``image``, ``grade``,
``probability_0``..``probability_4`` (or ``value`` for the regression head),
``referable`` (grade >= 2), ``referable_score`` (P(grade >= 2) = p2 + p3 + p4, or
the regression value: the score the screening figures rank by), ``patient``
(``<folder>/<id>`` for an EyePACS name ``<id>_left``/``<id>_right``, else the
image's own name in its folder; ``+`` joins the two of a ``--pair`` from two
folders), ``patient_referable`` (when both eyes of the patient were given and
graded: 1 if either eye's grade is >= 2, else 0; empty otherwise), ``gradable``
(``true``/``false``) and ``quality`` (why not: the reasons of
:data:`retinopathy.quality.verdict.REASONS`, ``"; "`` between them), ``error`` and
``warning`` (an input that is clearly not a colour fundus photograph: greyscale,
or one flat colour). An image that cannot be read gets
its reason in ``error`` and does not stop the others; the command then exits
with status 1 and says how many failed.

Quality: every photograph that can be read is judged by the transparent assessor
(:func:`retinopathy.quality.verdict.assess`), decoded at its own size, with
params.yaml's ``quality.thresholds``. An ungradable one is graded and marked
(``quality.ungradable: flag``), or gets no grade, no scores and no patient call
(``withhold``, ``source`` ``withheld``; its other eye is then graded alone);
``--ungradable`` overrides the param. One line per ungradable photograph names
its reasons, each with its measure and threshold, and a count follows; an
ungradable photograph is no error (the exit status stays 0). ``--quality-model
FILE`` (``models/quality.json``, the learned assessor the `quality` stage fits on
``quality.labels``) adds a last column, ``learned_reject``: its P(EyeQ Reject) of
each photograph read, from the same measures. It is a second opinion: the verdict,
``gradable``, ``quality`` and the policy stay the thresholds', since the learned
model knows only its training camera (BENCHMARKS.md, "Learned image quality"), and
each photograph it would reject that the thresholds keep is named.

params.yaml (``--params``) gives only the device, its speed switches, the
batch size, ``data.max_pixels`` and the ``quality`` thresholds and policy. Without it
(a shipped checkpoint graded outside the project: no ``--params`` and no params.yaml
in the current folder) :data:`STANDALONE` holds them: the device picked automatically
(CUDA when there is one), its switches automatic, a batch of 32, the
``data.max_pixels`` of the project's params.yaml, the assessor's default thresholds
and ``flag``.

Only ``argparse`` and the light contract module are imported at the top, so
``retinopathy predict --help`` does not wait for torch.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from retinopathy.core.config import QualityThresholds, cli_positive_int
from retinopathy.core.contract import (
    ARMS,
    COURSE_IMAGE_SIZE,
    GRADES,
    LEARNED_COLUMN,
    QUALITY_COLUMNS,
    REFERABLE_GRADE,
    UNGRADABLE_POLICIES,
    Layout,
    grade_label,
)
from retinopathy.core.errors import RetinopathyError, note, warn
from retinopathy.core.files import (
    atomic_file,
    check_output_file,
    csv_text,
    csv_with,
    png_ours,
    real_paths,
    rescue_text,
    write_csv_atomic,
)
from retinopathy.data.labels import eye_of, patient_of
from retinopathy.fusion.pairs import Patients, photo_patients

if TYPE_CHECKING:  # the heavy modules are imported in `predict`, so that --help is instant
    import torch

    from retinopathy.data.photos import PhotoDataset
    from retinopathy.engine.runtime import Runtime
    from retinopathy.fusion.blend import BlendRecord
    from retinopathy.models.grader import Grader
    from retinopathy.models.head import Head
    from retinopathy.quality.photos import SecondOpinion
    from retinopathy.quality.verdict import Verdict

PARAMS_FILE = "params.yaml"
QUALITY_MODEL_FIX = (
    "run `dvc repro quality` with quality.labels naming EyeQ-format labels (at least 20 Reject and 20 other "
    "photographs in the train split) to write models/quality.json, or leave --quality-model out"
)
# The `source` of a row whose grade was withheld (--ungradable withhold): no grade, see `quality`.
WITHHELD = "withheld"
# The one rule of who is whom, as `predict --help` states it (fusion.pairs.photo_patients applies it).
PATIENTS = (
    "Patients: two photographs are one patient's only when they are in the same folder and named "
    "<id>_left and <id>_right (the eye in any case), or when they are given as --pair LEFT RIGHT; "
    "a/7_left.jpeg and b/7_right.jpeg are two people. The patient column names the patient with "
    "its folder (a/7), and patient_referable, like the blend, joins only that patient's two eyes."
)


@dataclass(frozen=True)
class Settings:
    """What predict takes from params.yaml: the device, its switches, the batch, the pixel limit,
    the quality thresholds and what to do with an ungradable photograph."""

    device: str
    precision: str
    channels_last: str
    num_workers: int | str
    batch_size: int
    max_pixels: int
    thresholds: QualityThresholds
    ungradable: str  # contract.UNGRADABLE_POLICIES
    source: str  # where they came from, for the message


# Without a params file: the device (and its switches) chosen automatically, as
# params.yaml's `auto` does, params.yaml's own data.max_pixels, the assessor's default
# thresholds (params.yaml repeats them) and params.yaml's `flag`: grade every photograph.
STANDALONE = Settings(
    device="auto",
    precision="auto",
    channels_last="auto",
    num_workers="auto",
    batch_size=32,
    max_pixels=40_000_000,
    thresholds=QualityThresholds(),
    ungradable="flag",
    source="built-in defaults (no params.yaml)",
)


def settings(params_path: str | None) -> Settings:
    """The settings from ``params_path``, from ./params.yaml if there is one, else :data:`STANDALONE`.

    Raises:
        RetinopathyError: ``--params`` names a file that is missing or invalid.
    """
    if params_path is None and not Path(PARAMS_FILE).is_file():
        return STANDALONE
    from retinopathy.core.config import load_params

    path = params_path or PARAMS_FILE
    params = load_params(path)
    train = params.train
    return Settings(
        device=train.device,
        precision=train.precision,
        channels_last=train.channels_last,
        num_workers=params.data.num_workers,
        batch_size=2 * train.batch_size,
        max_pixels=params.data.max_pixels,
        thresholds=params.quality.thresholds,
        ungradable=params.quality.ungradable,
        source=str(path),
    )


def columns(head: Head) -> list[str]:
    """The CSV's header: the scores depend on the head."""
    scores = ["value"] if head.regression else [f"probability_{grade}" for grade in GRADES]
    return [
        "image",
        "grade",
        *scores,
        "referable",
        "referable_score",
        "patient",
        "patient_referable",
        *QUALITY_COLUMNS,
        "error",
    ]


def _row(photo: Path, grade: int, scores: torch.Tensor, head: Head, quality: tuple[str, str]) -> list:
    values = [f"{float(scores):.6f}"] if head.regression else [f"{p:.6f}" for p in scores.tolist()]
    referable = float(scores) if head.regression else float(scores[REFERABLE_GRADE:].sum())
    return [
        str(photo),
        grade,
        *values,
        int(grade >= REFERABLE_GRADE),
        f"{referable:.6f}",
        patient_of(photo.stem),
        "",
        *quality,
        "",
    ]


def _blank_grade(head: Head) -> list[str]:
    """The grade, the scores, ``referable`` and ``referable_score`` of a row that has none."""
    # Every column but the image, patient, patient_referable, the two quality cells and error.
    return [""] * (len(columns(head)) - 6)


def _withheld_row(photo: Path, head: Head, quality: tuple[str, str]) -> list:
    """An ungradable photograph's row under ``withhold``: no grade, no scores, its reasons."""
    return [str(photo), *_blank_grade(head), patient_of(photo.stem), "", *quality, ""]


def patient_calls(groups: list[int], eyes: list[str | None], grades: list[int | None]) -> list[str]:
    """Each image's patient call: "1"/"0" where both eyes of its patient were graded, else "".

    A patient is referable when either eye's grade is >= 2 (the IDx-DR trial's "in at
    least one eye"). ``groups`` and ``eyes``: each image's patient and eye
    (:func:`~retinopathy.fusion.pairs.photo_patients`: one folder, or an explicit ``--pair``);
    ``grades``: each image's grade, None where it could not be graded.
    """
    graded_eyes: dict[int, dict[str, int]] = {}
    for group, eye, grade in zip(groups, eyes, grades, strict=True):
        if eye is not None and grade is not None:
            found = graded_eyes.setdefault(group, {})
            found[eye] = max(found.get(eye, grade), grade)
    calls = []
    for group, eye, grade in zip(groups, eyes, grades, strict=True):
        graded = graded_eyes.get(group, {})
        both = grade is not None and eye is not None and set(graded) == {"left", "right"}
        calls.append(str(int(max(graded.values()) >= REFERABLE_GRADE)) if both else "")
    return calls


def pair_indices(pairs: list[list[Path]], photos: list[Path]) -> list[tuple[int, int]]:
    """``--pair LEFT RIGHT`` as (left index, right index) into ``photos``, each pair checked before grading.

    A pair must name two of the inputs, given once each, that are two photographs, LEFT named as a left
    eye and RIGHT as a right eye (``<patient>_left``, ``<patient>_right``, any case): the name is what
    every row's eye and the blend's side are read from, so a pair the names contradict is refused.

    Raises:
        RetinopathyError: naming the argument, what is wrong and the fix.
    """
    from retinopathy.data.photos import same_photograph

    where: dict[str, list[int]] = {}
    for index, photo in enumerate(photos):
        where.setdefault(os.path.realpath(photo), []).append(index)
    found: list[tuple[int, int]] = []
    for left, right in pairs:
        given = f"--pair {left} {right}"
        indices = []
        for role, path in (("LEFT", left), ("RIGHT", right)):
            at = where.get(os.path.realpath(path), [])
            if not at:
                raise RetinopathyError(
                    f"{given}: {role} {path} is not one of the images given to grade; give it as a PATH too"
                )
            if len(at) > 1:
                raise RetinopathyError(
                    f"{given}: {role} {path} is given {len(at)} times among the images to grade; give it once"
                )
            indices.append(at[0])
        if (same := same_photograph(left, right)) is not None:
            raise RetinopathyError(
                f"{given}: LEFT and RIGHT are one photograph ({same}); give the patient's "
                "left eye, then its right eye"
            )
        eyes = {role: eye_of(path.stem) for role, path in (("LEFT", left), ("RIGHT", right))}
        if eyes == {"LEFT": "right", "RIGHT": "left"}:
            raise RetinopathyError(
                f"{given}: the sides are swapped: LEFT {left} is named as a right eye "
                f"and RIGHT {right} as a left eye; give the left eye first: "
                f"--pair {right} {left}"
            )
        for role, path, eye in (("LEFT", left, "left"), ("RIGHT", right, "right")):
            if eyes[role] is None:
                raise RetinopathyError(
                    f"{given}: {role} {path} does not say which eye it is (its name is not <patient>_left "
                    "or <patient>_right); name the photographs as EyePACS does (e.g. 7_left.jpeg, "
                    "7_right.jpeg), since each row's eye and the blend's side are read from the name"
                )
            if eyes[role] != eye:
                raise RetinopathyError(
                    f"{given}: {role} {path} is named as a {eyes[role]} eye; give one "
                    "patient's left eye, then its right eye"
                )
        found.append((indices[0], indices[1]))
    return found


def _failed_row(photo: Path, size: int, max_pixels: int, head: Head) -> list:
    from retinopathy.data.photos import photo_error

    # The dataset's worker saw the error; here it is raised again to be told.
    reason = photo_error(photo, size, max_pixels) or "could not be read"
    # Blank grade, scores, referable and referable score; the patient; a blank call; no verdict
    # (the photograph could not be read); the reason.
    return [str(photo), *_blank_grade(head), patient_of(photo.stem), "", "", "", reason]


def heat_map_names(photos: list[Path]) -> list[str]:
    """The file name of each photograph's heat map: ``<stem>.png``, ``<stem>-<index>.png`` for a repeat."""
    names: list[str] = []
    seen: set[str] = set()
    for index, path in enumerate(photos):
        names.append(f"{path.stem}.png" if f"{path.stem}.png" not in seen else f"{path.stem}-{index}.png")
        seen.add(names[-1])
    return names


def check_outputs(out: Path, explain_dir: Path | None, photos: list[Path], others: list[Path]) -> None:
    """Before any grading: the CSV and the heat maps replace no input and nothing predict did not write.

    Raises:
        RetinopathyError: naming the path and the fix.
    """
    inputs = real_paths([*photos, *others])
    check_output_file(out, "predict", csv_with("image", "grade", "error"), inputs)
    if explain_dir is not None:
        for number, name in enumerate(heat_map_names(photos)):
            check_output_file(explain_dir / name, "predict --explain", png_ours, inputs, writable=number == 0)


def explain(
    grader: Grader,
    dataset: PhotoDataset,
    graded: list[tuple[int, int, torch.Tensor]],
    head: Head,
    folder: Path,
) -> None:
    """One PNG per graded image: the photograph, the heat map of its grade, the grade and score as title."""
    from retinopathy.models.gradcam import grad_cam
    from retinopathy.reporting.heatmaps import save_explanation

    device = next(grader.parameters()).device
    names = heat_map_names(dataset.paths)
    for index, grade, scores in graded:
        image, _ = dataset[index]
        heat = grad_cam(grader, image.unsqueeze(0).to(device), [0 if head.regression else grade])[0]
        score = f"value {float(scores):.2f}" if head.regression else f"probability {float(scores[grade]):.2f}"
        path = dataset.paths[index]
        with atomic_file(folder / names[index], "wb") as stream:
            save_explanation(
                stream,
                image.permute(1, 2, 0).numpy(),
                heat,
                f"{path.name}: grade {grade_label(grade)} ({score})",
            )


def label_patients(rows: list[list], head: Head, patients: Patients, order: list[int]) -> None:
    """Fill in each row's ``patient`` and ``patient_referable``; ``order``: each row's input index."""
    patient, call = columns(head).index("patient"), columns(head).index("patient_referable")
    calls = patient_calls(
        [patients.group[i] for i in order],
        [patients.eye[i] for i in order],
        [None if row[1] == "" else row[1] for row in rows],
    )
    for row, index, value in zip(rows, order, calls, strict=True):
        row[patient], row[call] = patients.label[index], value


def build_parser() -> argparse.ArgumentParser:
    """The command's options (built without importing torch)."""
    parser = argparse.ArgumentParser(
        prog="retinopathy predict", description=__doc__.split("\n")[0], epilog=PATIENTS
    )
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="Images, folders or course-layout .csv lists."
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--arm",
        choices=ARMS,
        default="scratch",
        help="Use models/<arm>/best.pt of this project (default: scratch).",
    )
    which.add_argument(
        "--checkpoint",
        type=Path,
        metavar="FILE",
        help="Use this checkpoint instead; works outside the project too.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("predictions.csv"),
        help="The CSV to write (default: predictions.csv).",
    )
    parser.add_argument(
        "--tta",
        choices=("none", "flips"),
        default="none",
        help="With flips, average the scores over the four flips of each image (default: none).",
    )
    parser.add_argument(
        "--explain",
        type=Path,
        metavar="DIR",
        help="Also write a Grad-CAM heat map of each graded image into DIR.",
    )
    parser.add_argument(
        "--pair",
        nargs=2,
        action="append",
        type=Path,
        metavar=("LEFT", "RIGHT"),
        help="Two inputs that are one patient's eyes, e.g. from two folders (repeatable): "
        "LEFT named <id>_left, RIGHT named <id>_right (swapped sides, one photograph "
        "twice or a name without an eye are refused). The pair gives the patient and "
        "patient_referable columns, and the blend's grades when there is a blend.",
    )
    fusion = parser.add_mutually_exclusive_group()
    fusion.add_argument(
        "--blend",
        type=Path,
        metavar="FILE",
        help="The both-eyes blend (default: models/<arm>.fuse.pt when it exists; none with --checkpoint).",
    )
    fusion.add_argument(
        "--single", action="store_true", help="Grade every photograph alone, even when a blend exists."
    )
    parser.add_argument(
        "--batch-size",
        type=cli_positive_int,
        metavar="N",
        help="Images per batch (default: twice train.batch_size, as evaluate; "
        f"{STANDALONE.batch_size} without params.yaml).",
    )
    parser.add_argument(
        "--ungradable",
        choices=UNGRADABLE_POLICIES,
        help="What to do with a photograph the quality assessor finds ungradable: flag (grade it, "
        "gradable false) or withhold (no grade, no scores, no patient call) (default: "
        "params.yaml's quality.ungradable; flag without params.yaml).",
    )
    parser.add_argument(
        "--quality-model",
        type=Path,
        metavar="FILE",
        help="A learned quality assessor (models/quality.json, which the quality stage fits on "
        "quality.labels): adds the column learned_reject, its P(EyeQ Reject) of each photograph, and "
        "names the photographs it would reject; gradable, quality and --ungradable stay the thresholds'.",
    )
    parser.add_argument(
        "--params",
        metavar="FILE",
        help="The device, its switches, the batch size, data.max_pixels, quality.thresholds and "
        "quality.ungradable (default: params.yaml when the current folder has one, else built-in "
        "defaults).",
    )
    return parser


def blend_for(args: argparse.Namespace, fingerprint: str) -> BlendRecord | None:
    """The blend to grade pairs with (None: every photograph alone), checked to read this network's features.

    Raises:
        RetinopathyError: the blend is damaged, or was learned on another checkpoint's features.
    """
    from retinopathy.fusion.blend import BlendRecord

    if args.single:
        return None
    path = args.blend or (None if args.checkpoint else Layout().blend(args.arm))
    if path is None or (args.blend is None and not path.is_file()):
        return None
    fix = f"run `dvc repro fuse@{args.arm}`, or pass --single to grade each photograph alone"
    record = BlendRecord.load(path, fix)
    if record.learned and record.fingerprint != fingerprint:
        raise RetinopathyError(
            f"{path}: learned on the features of run {record.fingerprint}, not of the "
            f"checkpoint's run {fingerprint}; {fix}"
        )
    return record if record.learned else None


def fuse_pairs(
    record: BlendRecord,
    grader: Grader,
    dataset: PhotoDataset,
    graded: list[int],
    patients: Patients,
    batch_size: int,
    runtime: Runtime,
    source: Path,
    fix: str,
) -> dict[int, tuple[int, torch.Tensor]]:
    """The blend's (grade, scores) of every graded input whose other eye is graded too, by input index.

    Raises:
        RetinopathyError: naming the blend's file ``source`` and ``fix``: it does not fit this
            network's features, or its scores are not finite.
    """
    import torch

    from retinopathy.engine.batches import loader
    from retinopathy.fusion.blend import fused_scores
    from retinopathy.fusion.features import blend_inputs, extract
    from retinopathy.fusion.pairs import NO_PARTNER

    partner, side = patients.partner, patients.side
    ok = set(graded)
    rows = [i for i in graded if partner[i] != NO_PARTNER and partner[i] in ok]
    if not rows:
        return {}
    extracted = extract(
        grader,
        loader(dataset, batch_size, rows, runtime),
        runtime,
        "features",
        "the batch size (--batch-size)",
    )
    inputs = blend_inputs(extracted, record.inputs, record.head())
    at = {index: row for row, index in enumerate(rows)}
    other = torch.tensor([at[partner[i]] for i in rows])
    side_of = torch.tensor([side[i] for i in rows])
    scores, grades = fused_scores(record, inputs, inputs[other], side_of, source, fix)
    return {index: (int(grades[row]), scores[row]) for row, index in enumerate(rows)}


def report_ungradable(
    photos: list[Path], verdicts: dict[int, Verdict | None], policy: str, source: str, out: Path
) -> None:
    """Print one line per ungradable photograph (each reason: its measure and threshold), then how many.

    Args:
        photos: The inputs, by index.
        verdicts: The verdict on each photograph that could be read, by input index (None: not judged).
        policy: ``flag`` or ``withhold`` (:data:`~retinopathy.core.contract.UNGRADABLE_POLICIES`).
        source: Where the policy came from, for the message.
        out: The CSV written.
    """
    from retinopathy.quality.photos import explain_verdict

    ungradable = [(index, v) for index, v in sorted(verdicts.items()) if v is not None and not v.gradable]
    for index, verdict in ungradable:
        note(f"ungradable: {photos[index]}: {explain_verdict(verdict)}")
    if not ungradable:
        return
    done = (
        "their grades, scores and patient calls are left empty"
        if policy == "withhold"
        else "they were graded anyway, so their grades mean little"
    )
    warn(
        f"{len(ungradable)} of {len(verdicts)} photographs are ungradable: {done} ({source}: {policy}); "
        f"re-image them - `gradable` and `quality` in {out} say why"
    )


def report_second_opinions(
    photos: list[Path],
    verdicts: dict[int, Verdict | None],
    opinions: dict[int, SecondOpinion],
    threshold: float,
    source: Path,
) -> None:
    """Say how many photographs the learned assessor would reject, and name those the thresholds keep.

    Args:
        photos: The inputs, by index.
        verdicts: The thresholds' verdict on each photograph read, by input index.
        opinions: The learned assessor's view of each, by input index.
        threshold: Its threshold as P(Reject).
        source: Its file (``--quality-model``).
    """
    rejected = [index for index, opinion in sorted(opinions.items()) if opinion.ungradable]
    for index in rejected:
        verdict = verdicts[index]
        if verdict is not None and verdict.gradable:
            opinion = opinions[index]
            note(
                f"learned assessor: {photos[index]}: P(Reject) {opinion.probability:.3f}, mostly "
                f"{', '.join(opinion.reasons)}; the thresholds find it gradable"
            )
    print(
        f"learned assessor {source}: {len(rejected)} of {len(opinions)} photographs at or above its "
        f"threshold, P(Reject) >= {threshold:.3f} (column {LEARNED_COLUMN}); gradable and quality are "
        "the thresholds'"
    )


def report_withheld_patients(patients: Patients, withheld: set[int], read: set[int]) -> None:
    """Say how many patients whose two eyes were given get no call, because an eye's grade was withheld."""
    eyes: dict[int, set[str]] = {}
    for index in read:
        if (eye := patients.eye[index]) is not None:
            eyes.setdefault(patients.group[index], set()).add(eye)
    missed = {patients.group[i] for i in withheld if eyes.get(patients.group[i], set()) == {"left", "right"}}
    if missed:
        note(
            f"{len(missed)} patient(s) with both eyes given get no patient_referable: an eye is "
            "ungradable and its grade withheld (a screening programme refers or re-images them)"
        )


def main(argv: list[str] | None = None) -> int:
    """CLI: see the module's docstring. Returns 1 if any image could not be graded."""
    args = build_parser().parse_args(argv)
    chosen = settings(args.params)

    import torch  # noqa: F401  (here, not at the top: --help must not wait for it)

    from retinopathy.data.photos import PhotoDataset, collect, photo_warning
    from retinopathy.engine import checkpoint, loops
    from retinopathy.engine.batches import loader
    from retinopathy.engine.runtime import make_runtime, resolve_device
    from retinopathy.models.head import require_finite
    from retinopathy.quality.learned import read_assessor
    from retinopathy.quality.photos import assess_photos, cpu_workers, quality_cells, second_opinions
    from retinopathy.reporting.results import missing_checkpoint_fix

    path = args.checkpoint or Layout().arm(args.arm).best
    fix = "pass another --checkpoint" if args.checkpoint else missing_checkpoint_fix(args.arm, Layout())
    trained = checkpoint.load_trained(path, fix=fix)
    spec = trained.spec
    head = spec.head()
    photos = collect(args.paths)
    if not photos:
        raise RetinopathyError(f"{' '.join(args.paths)}: no JPEG or PNG image there to grade")
    patients = photo_patients(photos, pair_indices(args.pair or [], photos))
    blend = blend_for(args, trained.state.fingerprint)
    learned = None if args.quality_model is None else read_assessor(args.quality_model, QUALITY_MODEL_FIX)
    given = [Path(raw) for raw in args.paths if Path(raw).is_file()]
    params_file = [Path(args.params)] if args.params else []
    models = [path, *([args.quality_model] if args.quality_model else [])]
    check_outputs(args.out, args.explain, photos, [*given, *models, *params_file])

    runtime = make_runtime(
        resolve_device(chosen.device),
        precision=chosen.precision,
        channels_last=chosen.channels_last,
        num_workers=chosen.num_workers,
    )
    runtime.configure_backends()
    grader = runtime.place(trained.grader)
    size, max_pixels = spec.image_size or COURSE_IMAGE_SIZE, chosen.max_pixels
    dataset = PhotoDataset(photos, size, max_pixels)
    batches = loader(dataset, args.batch_size or chosen.batch_size, list(range(len(dataset))), runtime)
    tta = args.tta == "flips"
    scores, grades, indices = loops.predict(grader, batches, runtime, head, "predict", tta=tta)
    # Only the photographs the grader could read: an unreadable one is no photograph to judge,
    # and an entry that is no regular file (a named pipe) is never opened.
    judged = [index for index in indices.tolist() if index >= 0]
    assessed = assess_photos(
        [photos[index] for index in judged], chosen.thresholds, max_pixels, cpu_workers(chosen.num_workers)
    )
    verdicts = dict(zip(judged, assessed, strict=True))
    policy = args.ungradable or chosen.ungradable
    withheld = {i for i, v in verdicts.items() if policy == "withhold" and v is not None and not v.gradable}
    read = indices >= 0  # the others could not be read: their rows are blank, whatever the network said
    again = (
        "pass another --checkpoint"
        if args.checkpoint
        else f"train the arm again (`dvc repro -f train@{args.arm}`), or pass --checkpoint FILE"
    )
    require_finite(
        scores[read],
        path,
        f"its weights are finite, but it overflows on these images; {again}",
        [str(photos[i]) for i in indices[read].tolist()],
    )

    blend_path = args.blend or Layout().blend(args.arm)
    fused = (
        {}
        if blend is None
        else fuse_pairs(
            blend,
            grader,
            dataset,
            # A withheld eye has no grade: its partner is graded alone, and the patient gets no call.
            [i for i in indices.tolist() if i >= 0 and i not in withheld],
            patients,
            args.batch_size or chosen.batch_size,
            runtime,
            blend_path,
            f"run `dvc repro fuse@{args.arm}` again, or pass --single to grade each photograph alone",
        )
    )
    rows: list[list] = []
    graded: list[tuple[int, int, torch.Tensor]] = []
    for row_scores, grade, index in zip(scores, grades.tolist(), indices.tolist(), strict=True):
        if index < 0:
            rows.append([*_failed_row(photos[-1 - index], size, max_pixels, head), "", ""])
            continue
        warning = photo_warning(photos[index], max_pixels)
        cells = quality_cells(verdicts[index])
        if index in withheld:
            rows.append([*_withheld_row(photos[index], head, cells), warning, WITHHELD])
            continue
        source = "fused" if index in fused else "single" if blend is None else "single-no-partner"
        shown_grade, shown_scores = fused.get(index, (grade, row_scores))
        rows.append([*_row(photos[index], shown_grade, shown_scores, head, cells), warning, source])
        graded.append((index, grade, row_scores))
    order = [-1 - index if index < 0 else index for index in indices.tolist()]
    label_patients(rows, head, patients, order)
    header = [*columns(head), "warning", "source"]
    warned = header.index("warning")
    opinions = {} if learned is None else second_opinions(learned, verdicts)
    if learned is not None:  # the learned assessor's view, after every other column
        header.append(LEARNED_COLUMN)
        for row, index in zip(rows, order, strict=True):
            row.append(f"{opinions[index].probability:.4f}" if index in opinions else "")
    try:
        write_csv_atomic(args.out, header, rows)
    except RetinopathyError as error:  # a full disk: the grades are kept elsewhere, not lost
        raise rescue_text(args.out, csv_text(header, rows), "grades", error) from None
    print(
        f"wrote {args.out}: {len(graded)} of {len(rows)} images graded with {path}"
        + (f" ({len(withheld)} ungradable, withheld)" if withheld else "")
    )
    policy_source = (
        "--ungradable"
        if args.ungradable
        else "the default without params.yaml"
        if chosen is STANDALONE
        else f"quality.ungradable of {chosen.source}"
    )
    report_ungradable(photos, verdicts, policy, policy_source, args.out)
    if learned is not None:
        report_second_opinions(photos, verdicts, opinions, learned.threshold_probability, args.quality_model)
    if withheld:
        report_withheld_patients(patients, withheld, set(verdicts))
    if fused:
        print(
            f"{len(fused)} images graded with both eyes by {blend_path}"
            f"{' (without --tta)' if tta else ''}; see the `source` column"
        )
    if flagged := sum(bool(row[warned]) for row in rows):
        warn(
            f"{flagged} of {len(verdicts)} images do not look like colour fundus photographs "
            "(greyscale, or one flat colour); their grades mean little - see the `warning` column of "
            f"{args.out}"
        )
    if args.explain and graded:
        try:
            explain(grader, dataset, graded, head, args.explain)
        except RetinopathyError as error:
            raise RetinopathyError(f"{error}. The grades are in {args.out}") from None
        print(f"wrote {len(graded)} heat maps to {args.explain}/")
    # A withheld photograph was read and judged: only those that could not be read are failures.
    if failed := len(rows) - len(verdicts):
        note(
            f"error: {failed} of {len(rows)} images could not be graded; see the `error` column of {args.out}"
        )
        return 1
    return 0
