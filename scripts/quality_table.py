"""The image-quality checks of BENCHMARKS.md ("Image quality"): measures and verdicts on real and demo photos.

``python scripts/quality_table.py [DEMO_FOLDER]`` prints, as Markdown: the measures and
verdict of scikit-image's real fundus photograph (``skimage.data.retina()``, CC0), of that
photograph in a camera's framing, and of copies degraded by each fault of
``retinopathy.quality.degrade.FAULTS`` at its mild and reject strengths (saved as JPEG
quality 90, as a camera would); the strength from which each fault makes the real
photograph ungradable; with DEMO_FOLDER (written by ``retinopathy demo-data``), the range
of each measure over its photos and, per fault and strength, how many verdicts differ
from the expected one; and the time ``measure()`` takes on a 512 px photograph (one
thread, wall and CPU). Needs scikit-image (``pip install -e '.[test]'``).
"""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from retinopathy.data.images import decode_image
from retinopathy.quality.degrade import FAULTS
from retinopathy.quality.measures import measure
from retinopathy.quality.verdict import Verdict, assess


def as_jpeg(pixels: np.ndarray) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return np.asarray(Image.open(buffer).convert("RGB"))


def row(name: str, verdict: Verdict) -> str:
    values = [
        "-" if value is None else f"{value:.0f}" if key == "brightness" else f"{value:.2f}"
        for key, value in verdict.measures.as_dict().items()
    ]
    return f"| {name} | " + " | ".join(values) + f" | {', '.join(verdict.reasons) or 'gradable'} |"


def real_photograph(retina: np.ndarray) -> None:
    print("| photograph | " + " | ".join(measure(retina).as_dict()) + " | verdict |")
    print("|---" * 9 + "|")
    print(row("real (1411 px)", assess(retina)))
    course = as_jpeg(np.asarray(Image.fromarray(retina).resize((512, 512), Image.Resampling.LANCZOS)))
    print(row("real, 512 px JPEG", assess(course)))
    side = retina.shape[0]
    cut = side // 10  # a tenth of the diameter off the top and the bottom, in a 3:2 frame
    frame = np.zeros((side - 2 * cut, (side - 2 * cut) * 3 // 2, 3), np.uint8)
    left = (frame.shape[1] - side) // 2
    frame[:, left : left + side] = retina[cut : side - cut]
    print(row("real, 3:2 frame, top and bottom cut", assess(as_jpeg(frame))))
    for fault in FAULTS.values():
        for strength in (fault.mild, fault.reject):
            print(row(f"real, {fault.name} {strength}", assess(as_jpeg(fault(retina, strength, seed=1)))))
    steps = [round(0.05 * step, 2) for step in range(21)]
    for fault in FAULTS.values():
        first = next((s for s in steps if not assess(as_jpeg(fault(retina, s, seed=1))).gradable), None)
        print(f"\n{fault.name}: the real photograph is ungradable from strength {first}", end="")
    print()


def demo(folder: Path) -> None:
    photos = [decode_image(path) for path in sorted(folder.glob("*.jpeg"))]
    measures = [measure(photo).as_dict() for photo in photos]
    print(f"\n{len(photos)} demo photos of {folder}:")
    for key in measures[0]:
        values = np.array([m[key] for m in measures], dtype=float)
        print(f"- {key}: {values.min():.3f} to {values.max():.3f} (median {np.median(values):.3f})")
    for fault in FAULTS.values():
        for strength, expected in ((fault.mild, ()), (fault.reject, (fault.reason,))):
            verdicts = [assess(as_jpeg(fault(photo, strength, seed=i))) for i, photo in enumerate(photos)]
            other = [v.reasons for v in verdicts if v.reasons != expected]
            print(
                f"- {fault.name} {strength}: {len(other)} of {len(verdicts)} not {expected or 'gradable'}"
                + (f" {sorted(set(other))}" if other else "")
            )


def timing(retina: np.ndarray) -> None:
    photo = as_jpeg(np.asarray(Image.fromarray(retina).resize((512, 512), Image.Resampling.LANCZOS)))
    measure(photo)
    runs, wall, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - wall < 5:
        measure(photo)
        runs += 1
    wall_ms = (time.perf_counter() - wall) / runs * 1000
    cpu_ms = (time.process_time() - cpu) / runs * 1000
    print(
        f"\nmeasure() on a 512 px photograph: {wall_ms:.2f} ms wall, {cpu_ms:.2f} ms CPU ({runs} runs, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
    )


def main() -> None:
    try:
        from skimage import data
    except ImportError:
        sys.exit("scikit-image is not installed: pip install -e '.[test]'")
    retina = data.retina()
    real_photograph(retina)
    if len(sys.argv) > 1:
        demo(Path(sys.argv[1]))
    timing(retina)


if __name__ == "__main__":
    main()
