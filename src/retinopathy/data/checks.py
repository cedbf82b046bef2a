"""`prepare`'s image checks: every listed image decodes, and the checks across images.

They run before any training (identical content under two names, one size when
``data.image_size`` is null), so broken or odd files fail in `prepare` with the
CSV line that lists them, not mid-training.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from retinopathy.core.errors import RetinopathyError, where
from retinopathy.core.records import Duplicates
from retinopathy.data.images import MIN_IMAGE_SIDE, ImageFacts, check_image
from retinopathy.data.labels import MAX_LISTED, SPLIT_FILES, Record, image_path, parse_split


def _listing_lines(root: Path) -> dict[str, str]:
    """Map image name -> "file:line" of the CSV line that lists it under ``root``."""
    found: dict[str, str] = {}
    for split in SPLIT_FILES:
        try:
            parsed = parse_split(root, split)
        except RetinopathyError:
            continue  # only used to annotate another error; that error is still raised
        for record, line in zip(parsed.records, parsed.img_lines, strict=True):
            found.setdefault(record.image, where(parsed.img_path, line))
    return found


def _check_one(path: Path, max_pixels: int | None, min_side: int) -> ImageFacts | str:
    try:
        return check_image(path, max_pixels=max_pixels, min_side=min_side)
    except RetinopathyError as error:
        return str(error)


def check_images(
    root: str | Path,
    records: Sequence[Record],
    workers: int = 1,
    max_pixels: int | None = None,
    min_side: int = MIN_IMAGE_SIDE,
) -> list[ImageFacts]:
    """Fully decode every listed image, so broken files fail here and not mid-training.

    Also refuses images too small to be a fundus photograph
    (:data:`~retinopathy.data.images.MIN_IMAGE_SIDE`), and returns each image's
    SHA-256 and size, for the checks across images (identical content, one size).

    Args:
        root: Folder holding ``<name>.jpeg`` for every record (and the split CSVs,
            used to say which line lists a broken image).
        records: The records to check.
        workers: Threads decoding in parallel (the decoders release the GIL).
        max_pixels: Refuse images with more pixels than this, from their header.
        min_side: Refuse images with a shorter side (default: too small to be a fundus photograph).

    Raises:
        RetinopathyError: listing every missing, unreadable, truncated, corrupt,
            oversized, too small or not regular image file (the first 20 in full) with the
            CSV line that lists it.
    """
    root = Path(root)
    paths = [image_path(root, record.image) for record in records]
    check = functools.partial(_check_one, max_pixels=max_pixels, min_side=min_side)
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(check, paths))
    else:
        results = [check(path) for path in paths]
    failures = [
        (record, message)
        for record, message in zip(records, results, strict=True)
        if isinstance(message, str)
    ]
    if not failures:
        return [facts for facts in results if not isinstance(facts, str)]  # all of them
    listed = _listing_lines(root)
    lines = [
        f"  {listed.get(record.image, 'not listed in the split CSVs of ' + str(root))}: "
        f"{record.image!r} -> {message}"
        for record, message in failures[:MAX_LISTED]
    ]
    if len(failures) > MAX_LISTED:
        lines.append(f"  ... and {len(failures) - MAX_LISTED} more")
    raise RetinopathyError(
        f"{len(failures)} of {len(records)} images cannot be used:\n" + "\n".join(lines) + "\n"
        "Copy the missing or broken files again, or remove their lines from both CSVs."
    )


def identical_images(
    splits: dict[str, list[Record]], facts: dict[str, ImageFacts]
) -> list[list[tuple[str, Record]]]:
    """Groups of two or more listed images whose files have identical bytes (SHA-256), in list order.

    Args:
        splits: The records of each split.
        facts: Each image name's :class:`ImageFacts`, from :func:`check_images`.

    Returns:
        Each group as ``(split, record)`` pairs: the same photograph under two names,
        in one split (a duplicate) or in two (a leak from training into testing).
    """
    groups: dict[str, list[tuple[str, Record]]] = {}
    for split, records in splits.items():
        for record in records:
            groups.setdefault(facts[record.image].sha256, []).append((split, record))
    return [group for group in groups.values() if len(group) > 1]


def duplicates_summary(groups: list[list[tuple[str, Record]]]) -> Duplicates:
    """The counts of :func:`identical_images`' groups for ``summary.json``, with the first few named."""
    across = [group for group in groups if len({split for split, _ in group}) > 1]
    return Duplicates(
        groups=len(groups),
        images=sum(len(group) for group in groups),
        across_splits=len(across),
        within_a_split=len(groups) - len(across),
        different_grades=sum(len({record.label for _, record in group}) > 1 for group in groups),
        examples=[
            [f"{split}:{record.image} (grade {record.label})" for split, record in group]
            for group in (across + [g for g in groups if g not in across])[:MAX_LISTED]
        ],
    )


def check_one_size(root: str | Path, records: Sequence[Record], facts: dict[str, ImageFacts]) -> None:
    """With ``data.image_size: null`` the images are batched as stored, so all must have one size.

    Raises:
        RetinopathyError: naming the first image whose size differs from the commonest,
            and the fix (``data.image_size``).
    """
    sizes = Counter((facts[r.image].width, facts[r.image].height) for r in records)
    if len(sizes) <= 1:
        return
    (width, height), count = sizes.most_common(1)[0]
    odd = next(r for r in records if (facts[r.image].width, facts[r.image].height) != (width, height))
    seen = facts[odd.image]
    others = ", ".join(f"{w}x{h}" for (w, h) in list(sizes)[:5] if (w, h) != (width, height))
    raise RetinopathyError(
        f"{image_path(root, odd.image)}: {seen.width}x{seen.height} px, but {count} of {len(records)} "
        f"images are {width}x{height} (sizes found besides: {others}); with params.yaml "
        "`data.image_size: null` the images are used as stored, so they must all have one size - set "
        "`data.image_size` (e.g. 512) to resize every image, or resize the odd files"
    )
