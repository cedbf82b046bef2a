"""Issue 30's comparison of quality assessors (BENCHMARKS.md, "Learned image quality").

``python scripts/bench_quality_learned.py`` prints, as Markdown, how three assessors find the
photographs EyeQ would reject (quality 2) among the demo's TEST photos, each trained (where it
learns) on the demo's TRAIN photos only (the lists train_img.csv / test_img.csv of the demo):

(a) the transparent thresholds alone (``quality.verdict.judge``, the default thresholds);
(b) the learned assessor on the measures (``quality.learned.fit``, its defaults);
(c) a second head on the grader's backbone, measured as a linear probe: a logistic regression on
    the pooled penultimate features (``fusion.features.extract``) of the trained grader
    (``models/<arm>/best.pt``), the backbone frozen, its L2 penalty chosen by 5-fold
    cross-validation (AUC) on the train photos and its threshold by the rule of (b)
    (``quality.learned.choose_threshold``: specificity >= 0.95 on the train photos).

Then each again, unchanged, on the demo's shifted set (another camera; its truth.csv gives each
photo's quality and camera fault): (a) and (b) measure the camera's own files, (c) reads the set
as imported for the `external` stage (``data/external/demo-shifted``, the `demo-shifted` stage
or ``retinopathy import-external aptos2019 --root data/demo-shifted --out
data/external/demo-shifted --size 256``), as the grader would grade it.

For each: the AUC of Reject (of a yes/no verdict for (a)), sensitivity and specificity at its
threshold with Wilson 95% intervals, and how many Reject photos it names with the reason of
their camera fault (``quality.degrade.FAULTS``). Needs the demo (``retinopathy demo-data --out
data/demo --shifted data/demo-shifted``) and a trained arm (``dvc repro train@scratch``).
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from retinopathy.core.contract import DEMO_QUALITY, Layout
from retinopathy.data.images import decode_image
from retinopathy.data.labels import parse_split
from retinopathy.quality.degrade import FAULTS
from retinopathy.quality.learned import REJECT, choose_threshold, fit, is_reject
from retinopathy.quality.measures import Measures, measure
from retinopathy.quality.verdict import judge

SPECIFICITY = 0.95


def wilson(hits: int, total: int) -> str:
    """``hits/total`` as a percentage with its Wilson 95% interval."""
    if total == 0:
        return "-"
    z, share = 1.96, hits / total
    centre = (share + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(share * (1 - share) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return f"{share:.1%} ({hits}/{total}; {max(0.0, centre - half):.0%}-{min(1.0, centre + half):.0%})"


def row(name: str, reject: np.ndarray, score: np.ndarray, flagged: np.ndarray, named: str) -> str:
    """One Markdown row: AUC, sensitivity, specificity, reasons."""
    auc = roc_auc_score(reject, score)
    sensitivity = wilson(int(flagged[reject].sum()), int(reject.sum()))
    specificity = wilson(int((~flagged[~reject]).sum()), int((~reject).sum()))
    return f"| {name} | {auc:.4f} | {sensitivity} | {specificity} | {named} |"


def named_right(reasons: Sequence[tuple[str, ...]], faults: Sequence[str], reject: np.ndarray) -> str:
    """How many Reject photos the assessor flags with exactly their fault's reason."""
    right = sum(
        1
        for reason, fault, bad in zip(reasons, faults, reject, strict=True)
        if bad and reason == (FAULTS[fault].reason,)
    )
    return f"{right} of {int(reject.sum())}"


def measure_files(paths: Sequence[Path]) -> tuple[list[Measures], float]:
    """Every photo's measures (decoded whole, as `predict` would), and the seconds per photo."""
    start = time.perf_counter()
    measures = [measure(decode_image(path)) for path in paths]
    return measures, (time.perf_counter() - start) / max(1, len(paths))


def demo_labels(demo: Path) -> tuple[dict[str, int], dict[str, str]]:
    """The demo's EyeQ quality per image (quality.csv) and camera fault (truth.csv), by name."""
    with (demo / DEMO_QUALITY).open(newline="", encoding="utf-8") as stream:
        quality = {Path(line["image"]).stem: int(line["quality"]) for line in csv.DictReader(stream)}
    return quality, truth_faults(demo / "truth.csv")


def truth_faults(path: Path) -> dict[str, str]:
    with path.open(newline="", encoding="utf-8") as stream:
        return {line["image"]: line["fault"] for line in csv.DictReader(stream)}


def probe_features(arm: str, sets: dict[str, tuple[Path, list]]) -> dict[str, np.ndarray]:
    """The trained grader's pooled penultimate features of each set's images (eval mode, CPU, fp32)."""
    from retinopathy.core.errors import RetinopathyError
    from retinopathy.core.records import Skipped, read_status
    from retinopathy.engine.batches import eval_batches
    from retinopathy.engine.evaluation import load_best, open_grader
    from retinopathy.engine.runtime import Switches
    from retinopathy.fusion.features import extract

    files = Layout().arm(arm)
    status = read_status(files.status, arm)
    if isinstance(status, Skipped):
        raise RetinopathyError(f"{files.status}: the {arm} arm was not trained; run `dvc repro train@{arm}`")
    trained = load_best(files, status)
    found = {}
    for name, (root, records) in sets.items():
        opened = open_grader(Switches("cpu", "fp32"), str(root), None, trained, status, {"test": records})
        batches = eval_batches(opened.sources["test"], 16, opened.runtime)
        found[name] = extract(
            opened.grader, batches, opened.runtime, f"features {name}", "--"
        ).features.numpy()
    return found


@dataclass(frozen=True)
class Photos:
    """One set of photos: names, EyeQ levels, camera faults ('' for none), measures, root and records."""

    names: list[str]
    quality: np.ndarray
    faults: list[str]
    measures: list[Measures]
    root: Path
    records: list

    @property
    def reject(self) -> np.ndarray:
        return self.quality == REJECT


def probe(train: np.ndarray, reject: np.ndarray) -> tuple[Any, Any, float, float]:
    """A linear probe: standardised features, an L2 logistic regression whose C is chosen by 5-fold
    cross-validated AUC on the train photos, refit on all of them; and its scaler and C."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train)
    x = scaler.transform(train)
    folds = list(StratifiedKFold(5, shuffle=True, random_state=0).split(x, reject))
    best, best_auc = 1.0, -1.0
    for c in np.logspace(-4, 2, 13):
        aucs = [
            roc_auc_score(
                reject[held],
                LogisticRegression(C=c, max_iter=5000).fit(x[kept], reject[kept]).decision_function(x[held]),
            )
            for kept, held in folds
        ]
        if np.mean(aucs) > best_auc:
            best, best_auc = float(c), float(np.mean(aucs))
    return LogisticRegression(C=best, max_iter=5000).fit(x, reject), scaler, best, best_auc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demo", type=Path, default=Path("data/demo"))
    parser.add_argument("--shifted", type=Path, default=Path("data/demo-shifted"))
    parser.add_argument("--imported", type=Path, default=Path("data/external/demo-shifted"))
    parser.add_argument("--arm", default="scratch", help="whose best.pt gives the backbone (default scratch)")
    args = parser.parse_args()

    quality, faults = demo_labels(args.demo)
    sets: dict[str, Photos] = {}
    for split in ("train", "test"):
        records = parse_split(args.demo, split).records
        names = [record.image for record in records]
        measures, seconds = measure_files([args.demo / f"{name}.jpeg" for name in names])
        levels = np.array([quality[name] for name in names])
        sets[split] = Photos(names, levels, [faults[n] for n in names], measures, args.demo, records)
    shifted_faults = truth_faults(args.shifted / "truth.csv")
    with (args.shifted / "truth.csv").open(newline="", encoding="utf-8") as stream:
        shifted_quality = {line["image"]: int(line["quality"]) for line in csv.DictReader(stream)}
    records = parse_split(args.imported, "test").records
    names = [record.image for record in records]
    measures, _ = measure_files([args.shifted / "train_images" / f"{name}.png" for name in names])
    levels = np.array([shifted_quality[name] for name in names])
    sets["shifted"] = Photos(
        names, levels, [shifted_faults[n] for n in names], measures, args.imported, records
    )
    print(
        ", ".join(
            f"{name}: {len(photos.names)} photos ({int(photos.reject.sum())} Reject, "
            f"{int((photos.quality == 1).sum())} Usable)"
            for name, photos in sets.items()
        )
        + f"; measure(): {seconds * 1000:.1f} ms a demo photo\n"
    )

    start = time.perf_counter()
    train = sets["train"]
    labels = str(args.demo / DEMO_QUALITY)
    learned = fit(train.measures, is_reject(train.quality.tolist(), labels), labels)
    learned_seconds = time.perf_counter() - start
    start = time.perf_counter()
    features = probe_features(
        args.arm, {name: (photos.root, photos.records) for name, photos in sets.items()}
    )
    extract_seconds = time.perf_counter() - start
    start = time.perf_counter()
    model, scaler, c, cv_auc = probe(features["train"], train.reject)
    probe_scores = {
        name: model.decision_function(scaler.transform(found)) for name, found in features.items()
    }
    probe_threshold, probe_sensitivity, probe_specificity = choose_threshold(
        probe_scores["train"], train.reject, SPECIFICITY
    )
    probe_seconds = time.perf_counter() - start

    header = (
        "| assessor | AUC of Reject | sensitivity | specificity | Rejects named with their fault's reason |\n"
        "|---|---|---|---|---|"
    )
    titles = {
        "test": "Demo test photos (trained on the train photos)",
        "shifted": "Shifted set (another camera), the same assessors unchanged",
    }
    for name, title in titles.items():
        photos = sets[name]
        verdicts = [judge(one) for one in photos.measures]
        flagged = {
            "(a)": np.array([not verdict.gradable for verdict in verdicts]),
            "(b)": learned.ungradable(photos.measures),
            "(c)": probe_scores[name] >= probe_threshold,
        }
        reject = photos.reject
        print(f"### {title}\n\n{header}")
        reasons = [verdict.reasons for verdict in verdicts]
        print(
            row(
                "(a) transparent thresholds",
                reject,
                flagged["(a)"].astype(float),
                flagged["(a)"],
                named_right(reasons, photos.faults, reject),
            )
        )
        print(
            row(
                "(b) learned, on the measures",
                reject,
                learned.probability(photos.measures),
                flagged["(b)"],
                named_right(learned.reasons(photos.measures), photos.faults, reject) + " (attributed)",
            )
        )
        print(
            row(
                "(c) linear probe on the grader's features",
                reject,
                probe_scores[name],
                flagged["(c)"],
                "none: a probability only",
            )
        )
        print("\nFound ungradable, by camera fault and EyeQ level, (a) / (b) / (c):\n")
        print("| fault | Reject | Usable (a mild fault) |\n|---|---|---|")
        for fault in [*FAULTS, ""]:
            cells = []
            for level in (REJECT, 1):
                chosen = np.array([f == fault for f in photos.faults]) & (photos.quality == level)
                counts = " / ".join(str(int(found[chosen].sum())) for found in flagged.values())
                cells.append(f"{counts} of {int(chosen.sum())}" if chosen.any() else "-")
            if fault == "":
                chosen = photos.quality == 0
                counts = " / ".join(str(int(found[chosen].sum())) for found in flagged.values())
                print(f"| none (Good) | - | {counts} of {int(chosen.sum())} Good |")
            else:
                print(f"| {fault} | {cells[0]} | {cells[1]} |")
        wrong = Counter(
            "; ".join(reason)
            for reason, flag, bad in zip(
                learned.reasons(photos.measures), flagged["(b)"], reject, strict=True
            )
            if flag and not bad
        )
        said = ", ".join(f"{reason} {count}" for reason, count in wrong.most_common()) or "none flagged"
        print(f"\n(b)'s reasons for the gradable photos it flags: {said}\n")
    print(
        f"(b): P(Reject) threshold {learned.threshold_probability:.3f}; on the train photos sensitivity "
        f"{learned.train_sensitivity:.1%}, specificity {learned.train_specificity:.1%}; coefficients "
        + ", ".join(f"{term} {value:+.2f}" for term, value in learned.coefficients.items())
        + f"; fit {learned_seconds:.2f} s"
    )
    print(
        f"(c): {features['train'].shape[1]} features of {args.arm}'s best.pt; C {c:.3g} (5-fold "
        f"cross-validated AUC on the train photos {cv_auc:.3f}); on the train photos sensitivity "
        f"{probe_sensitivity:.1%}, specificity {probe_specificity:.1%}; features of "
        f"{sum(len(found) for found in features.values())} photos {extract_seconds:.0f} s, probe "
        f"{probe_seconds:.1f} s"
    )


if __name__ == "__main__":
    main()
