"""`retinopathy bench`: input-pipeline and training throughput, ours against references.

Three comparisons, each measured in one process on the same generated 512x512
JPEGs (synthetic fundus photographs, Pillow quality 95, written to a temporary
folder and removed afterwards):

(a) input: our uint8 loader (libjpeg-turbo with DCT scaling, through
    ``engine.batches.loader``) against the lab's reference loader (``PIL.Image.open`` ->
    ``np.asarray(img) / 255`` in float64 -> transpose -> ``torch.from_numpy``,
    DataLoader batch 4, no workers). Loading only, no model.
(b) models: a training step (forward, backward, SGD) of our ResNet18/ResNet50
    against torchvision's, with the same weights, the same batches and the
    device's fast-path switches on both sides.
(c) fast path: the same model with ``engine.runtime``'s switches (bf16
    autocast, channels_last, cuDNN autotuning, fused/foreach SGD) against a plain
    fp32 loop.

Machine noise (other processes on a shared CPU) is the enemy of a benchmark,
so the sides of a comparison are never run one after the other: after a
warm-up, they alternate in several short rounds, the starting side rotating
each round, and a rate is the images over the seconds of all its rounds. The
spread of the per-round ratios is printed next to each ratio; a wide spread
means the machine was busy. The run also reports how much CPU other processes
took meanwhile: on a shared CPU, torch's intra-op threads (one per core by
default) stall whenever another process holds a core, so use ``--threads 1``
there. On CUDA the timers are read only after ``torch.cuda.synchronize()``.

Usage: ``retinopathy bench`` (about 3-4 minutes on a 2-core CPU);
``retinopathy bench --device cuda --size 512 --batch 128`` on a GPU.

Modules:

- ``timing``: :class:`~timing.Measurement` and :func:`~timing.alternate`, the
  alternating-rounds harness;
- ``results``: :class:`~results.Comparison` and :class:`~results.BenchResult`,
  what a run records;
- ``machine``: the CPU/GPU and library versions, and how busy the machine was;
- ``inputs``: the generated JPEGs, the lab's reference loader and section (a);
- ``training``: the training step, sections (b) and (c);
- ``runner``: :class:`~runner.Settings` and :func:`~runner.run`, one run of the chosen sections;
- ``output``: the text table;
- ``cli``: the argument parser and ``main(argv)``, re-exported here for ``retinopathy.cli``.
"""

from __future__ import annotations

from retinopathy.commands.bench.cli import main

__all__ = ["main"]
