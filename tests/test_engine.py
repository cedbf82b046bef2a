"""The fast path agrees with the plain path; samplers cover every image exactly as promised."""

from __future__ import annotations

import copy

import pytest
import torch

from retinopathy.engine import loops
from retinopathy.engine.batches import collate_images
from retinopathy.engine.distributed import EpochShuffleSampler, Process, ShardSampler
from retinopathy.engine.optim import make_optimizer
from retinopathy.engine.runtime import Runtime, make_runtime, plain_runtime
from retinopathy.models.grader import IMAGENET_MEAN, IMAGENET_STD, Grader, GraderSpec, InputTransform
from retinopathy.models.head import Head
from retinopathy.models.resnet import resnet18

CPU = torch.device("cpu")


def test_uint8_input_equals_the_float_contract_after_transform():
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    transform = InputTransform("imagenet")
    via_uint8 = transform(images)
    via_float = transform(images.float() / 255)  # what RetinopathyDataset returns by default
    torch.testing.assert_close(via_uint8, via_float, atol=1e-5, rtol=1e-5)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(via_uint8, (images.float() / 255 - mean) / std, atol=1e-5, rtol=1e-5)
    plain = InputTransform("none")(images)
    torch.testing.assert_close(plain, images.float() / 255)


SPEC = GraderSpec(
    model="resnet18",
    image_size=None,
    normalize="imagenet",
    preprocess="none",
    loss="cross_entropy",
    thresholds=None,
)
CE = Head("cross_entropy")


def one_step(net, runtime, images, labels, optimizer_kind):
    model = runtime.place(Grader(copy.deepcopy(net), SPEC))
    if optimizer_kind == "project":
        optimizer = make_optimizer(model, runtime, lr=0.05, momentum=0.9, weight_decay=5e-4)  # foreach
    else:  # the textbook per-parameter loop
        optimizer = torch.optim.SGD(
            model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, foreach=False
        )
    result = loops.train_epoch(loops.Learner(model, optimizer, CE), [(images, labels)], runtime)
    return model, result


@pytest.mark.slow
@pytest.mark.parametrize("bf16", [False, True])
def test_fast_path_agrees_with_plain_fp32(bf16):
    torch.manual_seed(0)
    net = resnet18(num_classes=5)
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 4])
    plain = plain_runtime(CPU)
    fast = make_runtime(CPU, precision="bf16" if bf16 else "fp32", channels_last="on", num_workers=0)
    plain_model, plain_result = one_step(net, plain, images, labels, "textbook")
    fast_model, fast_result = one_step(net, fast, images, labels, "project")
    assert fast_model.input_format() == torch.channels_last
    tolerance = 3e-2 if bf16 else 1e-4  # bf16 keeps 8 bits of mantissa
    assert fast_result.loss == pytest.approx(plain_result.loss, rel=tolerance)
    # The SGD updates agree: per parameter in fp32 (channels_last only changes the
    # memory layout); as a whole in bf16, whose 8-bit mantissa makes the small,
    # nearly cancelling gradients of a random network on random images noisy.
    before = dict(net.named_parameters())
    fast_params = dict(fast_model.net.named_parameters())
    plain_updates, fast_updates = [], []
    for name, after in plain_model.net.named_parameters():
        plain_update = (after - before[name]).detach().flatten()
        fast_update = (fast_params[name] - before[name]).detach().flatten()
        plain_updates.append(plain_update)
        fast_updates.append(fast_update)
        if not bf16:
            error = (fast_update - plain_update).norm() / plain_update.norm().clamp_min(1e-12)
            assert error < 1e-3, f"{name}: relative update error {error:.3g}"
    cosine = torch.nn.functional.cosine_similarity(torch.cat(plain_updates), torch.cat(fast_updates), dim=0)
    assert cosine > (0.9 if bf16 else 0.99999)
    plain_model.eval(), fast_model.eval()
    with torch.no_grad():
        with fast.autocast():
            fast_logits = fast_model(images).float()
        torch.testing.assert_close(fast_logits, plain_model(images), atol=5 * tolerance, rtol=5 * tolerance)


def test_train_epoch_detects_a_nan_loss():
    model = torch.nn.Sequential(InputTransform("none"), torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5))
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    batches = [(torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8), torch.tensor([0, 1]))]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(loops.NonFiniteLoss):
        loops.train_epoch(loops.Learner(model, optimizer, CE), batches, plain_runtime(CPU))


@pytest.mark.slow
def test_bench_models_restores_the_backend_flags(monkeypatch):
    # bench.training's flags; here because tests/test_bench.py is owned elsewhere.
    from retinopathy.commands.bench import training
    from retinopathy.commands.bench.training import BackendFlags, bench_models

    before = BackendFlags.current()
    fast = BackendFlags(not before.benchmark, not before.matmul_tf32, not before.cudnn_tf32)

    def as_on_cuda(runtime):  # on the CPU configure_backends sets nothing; pretend it does
        torch.backends.cudnn.benchmark = fast.benchmark
        torch.backends.cuda.matmul.allow_tf32 = fast.matmul_tf32
        torch.backends.cudnn.allow_tf32 = fast.cudnn_tf32

    seen = []
    real_step = training.sgd_step

    def step_noting_the_flags(*args, **kwargs):
        seen.append(BackendFlags.current())
        return real_step(*args, **kwargs)

    monkeypatch.setattr(Runtime, "configure_backends", as_on_cuda)
    monkeypatch.setattr(training, "sgd_step", step_noting_the_flags)
    batches = [(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8), torch.tensor([0, 1]))]
    try:
        bench_models(batches, CPU, models=("resnet18",), seconds=0.01, rounds=1, warmup=1)
    finally:
        after = BackendFlags.current()
        before.apply()  # never leave the fake flags to later tests
    assert seen and set(seen) == {fast}  # every timed step ran with the fast flags
    assert after == before


def test_auto_switches_are_off_on_cpu():
    fast = make_runtime(CPU)
    assert not fast.bf16 and not fast.channels_last and not fast.pin_memory and fast.num_workers == 0
    forced = make_runtime(CPU, precision="bf16", channels_last="on", num_workers=0)
    assert forced.bf16 and forced.channels_last and forced.num_workers == 0


def test_epoch_shuffle_depends_only_on_seed_and_epoch_and_splits_across_processes():
    single = EpochShuffleSampler(10, seed=3, process=Process())
    single.set_epoch(2)
    first = list(single)
    torch.manual_seed(999)  # global RNG state must not matter
    again = EpochShuffleSampler(10, seed=3, process=Process())
    again.set_epoch(2)
    assert list(again) == first and sorted(first) == list(range(10))
    again.set_epoch(3)
    assert list(again) != first

    shards = []
    for rank in range(3):
        sampler = EpochShuffleSampler(10, seed=3, process=Process(rank, 3, rank))
        sampler.set_epoch(2)
        shards.append(list(sampler))
    assert {len(shard) for shard in shards} == {4}  # equal steps on every process
    assert set().union(*shards) == set(range(10))


def test_shard_sampler_counts_every_test_image_once():
    shards = [list(ShardSampler(11, Process(rank, 4, rank))) for rank in range(4)]
    flat = [i for shard in shards for i in shard]
    assert sorted(flat) == list(range(11))


def test_batchnorm_recalibration_averages_the_batch_statistics():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(3))
    batches = [(torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8), torch.zeros(4)) for _ in range(3)]
    transform = InputTransform("none")
    weight_before = model[0].weight.clone()
    loops.recalibrate_batchnorm(torch.nn.Sequential(transform, model), batches, plain_runtime(CPU))
    inputs = [transform(images) for images, _ in batches]
    expected_mean = torch.stack([x.mean(dim=(0, 2, 3)) for x in inputs]).mean(0)
    expected_var = torch.stack([x.var(dim=(0, 2, 3), unbiased=True) for x in inputs]).mean(0)
    torch.testing.assert_close(model[0].running_mean, expected_mean)
    torch.testing.assert_close(model[0].running_var, expected_var)
    assert model[0].momentum == 0.1 and torch.equal(model[0].weight, weight_before)


def test_collate_images_equals_the_default_collate():
    from torch.utils.data import default_collate

    hwc = [torch.randint(0, 256, (6, 5, 3), dtype=torch.uint8) for _ in range(3)]
    batch = [(image.permute(2, 0, 1), label) for label, image in enumerate(hwc)]  # as the Dataset returns
    images, labels = collate_images(batch)
    expected_images, expected_labels = default_collate(batch)
    assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)
    assert images.is_contiguous(memory_format=torch.channels_last)
