"""How much judging photographs over processes saves (BENCHMARKS.md, "Image quality").

``python scripts/bench_quality_processes.py [--rounds 2] [--camera 96]`` prints two lines, each
one process against two, interleaved round by round:

- the `quality` stage's way (``quality.photos.assess_files``, forked processes): every photograph
  of the prepared index (``data/prepared/index.csv``, ``data/demo``; run ``dvc repro prepare``);
- predict's way (``quality.photos.assess_photos``, spawned processes after a second of judging
  here): ``--camera`` copies of scikit-image's real fundus photograph (CC0) scaled into a
  4752x3168 camera frame and saved as JPEG, in a temporary folder removed afterwards.

Run it with nothing else heavy on the machine (``OMP_NUM_THREADS=1``); it checks that every
count of processes gives the same verdicts.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

from retinopathy.core.config import QualityThresholds
from retinopathy.data.index import read_index
from retinopathy.data.labels import image_path
from retinopathy.quality.photos import assess_files, assess_photos


def timed(function, rounds: int) -> dict[int, list[float]]:
    """Seconds of ``function(workers)`` for 0 and 2 workers, interleaved; the verdicts must agree."""
    times: dict[int, list[float]] = {0: [], 2: []}
    first = None
    for _ in range(rounds):
        for workers in times:
            started = time.perf_counter()
            verdicts = function(workers)
            times[workers].append(time.perf_counter() - started)
            assert first is None or verdicts == first, "the verdicts differ between counts of processes"
            first = verdicts
    return times


def line(what: str, times: dict[int, list[float]]) -> str:
    one, two = (statistics.median(times[w]) for w in (0, 2))
    spans = {w: f"{min(t):.2f}-{max(t):.2f} s" for w, t in times.items()}
    return f"{what}: one process {spans[0]}, two {spans[2]}; {one / two:.2f}x at the median"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--camera", type=int, default=96, help="camera-size photographs for predict's way")
    args = parser.parse_args()
    thresholds = QualityThresholds()

    index = read_index(Path("data/prepared/index.csv"))
    demo = [image_path("data/demo", record.image) for records in index.values() for record in records]
    print(
        line(
            f"quality stage, {len(demo)} demo photos",
            timed(lambda w: assess_files(demo, thresholds, w), args.rounds),
        )
    )

    from skimage import data

    with tempfile.TemporaryDirectory() as folder:
        eye = Image.fromarray(data.retina()).resize((3168, 3168), Image.Resampling.BICUBIC)
        frame = Image.new("RGB", (4752, 3168))
        frame.paste(eye, (792, 0))
        photos = [Path(folder) / f"{number}.jpeg" for number in range(args.camera)]
        for photo in photos:
            frame.save(photo, "JPEG", quality=90)
        verdicts = timed(lambda w: assess_photos(photos, thresholds, 40_000_000, w), args.rounds)
        print(line(f"predict, {len(photos)} 4752x3168 camera JPEGs", verdicts))


if __name__ == "__main__":
    main()
