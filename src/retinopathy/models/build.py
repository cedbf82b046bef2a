"""Building a network for training: from scratch, from ImageNet (torchvision), or from a file.

Every architecture is a record of :mod:`retinopathy.core.registry`; this
module imports the module that builds each by the record's name and reaches a network's parts
(its head) through the record's submodule paths. Pretrained weights are loaded
strictly into the 1000-class network, then the final Linear (the record's
``head``) is replaced by a 5-way one, as the lab does. Nothing is ever
silently replaced by random weights: every failure is a RetinopathyError that
names the file and the fix. As in torchvision, the weights are data: a URL and
a hash, read through torchvision's own weights API and its TORCH_HOME cache.
"""

from __future__ import annotations

import importlib
import os
import re
import socket
import time
import urllib.error
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import torch
import torchvision.models as tvm
from torch import nn

from retinopathy.core.contract import DOWNLOAD_TIMEOUT, NO_DOWNLOAD_ENV, NUM_GRADES
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.files import sha256_of
from retinopathy.core.registry import MODELS, REGISTRY, architecture
from retinopathy.core.torchload import load_tensors


def builder_of(name: str) -> Callable[..., nn.Module]:
    """The function that builds architecture ``name``: its record's ``builder`` under ``retinopathy.models``.

    Imported by name, so that adding an architecture is its module and its record, nothing else;
    ``pipeline.codedeps`` counts every record's module as imported by this one (dvc.yaml's deps and
    the checkpoint fingerprint see it).
    """
    record = architecture(name)
    module = importlib.import_module(f"retinopathy.models.{record.module}")
    builder = getattr(module, record.function, None)
    if not callable(builder):
        raise RetinopathyError(
            f"core/registry.py: {record.name}'s builder {record.builder!r} is not a "
            f"function of retinopathy/models/{record.module}.py; fix the record"
        )
    return builder


# torchvision's ImageNet-1k weights, reached through its own weights API so the
# file lands in (and is read from) the usual TORCH_HOME cache.
IMAGENET = {name: tvm.get_weight(REGISTRY[name].imagenet) for name in MODELS}
WEIGHTS_KEY = "train.weights"  # the params.yaml key that points at a local file instead


def check_model_name(name: str) -> None:
    """Raise a RetinopathyError listing the choices unless ``name`` is an architecture we build."""
    architecture(name)


def new_model(name: str, num_classes: int = 1000, zero_init_residual: bool = False) -> nn.Module:
    """An initialised network of architecture ``name`` (a name of the registry).

    Args:
        name: ``resnet18``, ``efficientnet_b0``, ... (``registry.MODELS``).
        num_classes: outputs of the final Linear layer.
        zero_init_residual: start every residual block as the identity (its last
            BatchNorm's scale at 0; Goyal et al. 2017), for training from scratch;
            only for architectures whose record allows it.

    Raises:
        RetinopathyError: for an unknown name, listing the choices, or zero_init_residual
            for an architecture without it.
    """
    record = architecture(name)
    if zero_init_residual and not record.zero_init_residual:
        allowed = ", ".join(r.name for r in REGISTRY.values() if r.zero_init_residual)
        raise RetinopathyError(
            f"`train.zero_init_residual` is true for {name}, which has no residual blocks "
            f"that start as the identity (only {allowed}); set it false for {name}"
        )
    builder = builder_of(record.name)
    return builder(num_classes=num_classes, zero_init_residual=zero_init_residual)


def head_of(net: nn.Module, name: str) -> nn.Linear:
    """The final Linear of ``net``, an architecture ``name`` network (its record's ``head``)."""
    head = net.get_submodule(architecture(name).head)
    if not isinstance(head, nn.Linear):
        raise TypeError(f"{name}: {architecture(name).head} is a {type(head).__name__}, not the final Linear")
    return head


def replace_head(net: nn.Module, name: str, num_classes: int) -> None:
    """Put a fresh ``num_classes``-way Linear (PyTorch's default init) in place of ``net``'s head."""
    net.set_submodule(architecture(name).head, nn.Linear(head_of(net, name).in_features, num_classes))


def imagenet_cache_file(name: str) -> Path:
    """The file torchvision reads ImageNet weights from: ``$TORCH_HOME/hub/checkpoints/<file>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(IMAGENET[name].url)


class WeightsUnavailableError(RetinopathyError):
    """ImageNet weights are neither cached nor downloadable.

    Attributes:
        reason: Why, in words that are the same on every machine (for the pretrained arm's manifest;
            the message has this machine's cache path and network error).
        fix: What the user can do about it.
    """

    def __init__(self, message: str, reason: str, fix: str) -> None:
        super().__init__(message)
        self.reason, self.fix = reason, fix


class CorruptWeightsError(RetinopathyError):
    """A cached ImageNet file fails its hash check: the user's to fix, never a reason to skip."""


def _check_cached_hash(name: str, path: Path) -> str:
    # torchvision checks the hash only when it downloads; a cached file that was
    # copied in by hand is checked here against the hash prefix in its name.
    digest = sha256_of(path)
    expected = re.search(r"-([a-f0-9]+)\.", path.name)
    if expected and not digest.startswith(expected.group(1)):
        raise CorruptWeightsError(
            f"{path}: SHA-256 {digest[:12]}... does not match the hash {expected.group(1)} in "
            f"its name, so it is not torchvision's {IMAGENET[name]} file (corrupt or "
            "replaced); delete it and download it again, or set "
            f"`{WEIGHTS_KEY}` in params.yaml to your own .pth file"
        )
    return digest


# Where torchvision keeps downloaded weights, as every machine can read it: committed
# outputs (the manifest, the arm's info, the report) say this, never one machine's
# expanded home folder, so they are the same on every machine with the same inputs.
PORTABLE_CACHE = "$TORCH_HOME/hub/checkpoints/ (by default ~/.cache/torch/hub/checkpoints/)"


def offline_help(name: str) -> tuple[str, str]:
    """The reason and the fix when ImageNet weights for ``name`` are not available.

    Both are machine-independent (they go into committed outputs): no expanded cache
    path, no network error text. :func:`fetch_imagenet`'s message has those details.
    """
    file = os.path.basename(IMAGENET[name].url)
    reason = (
        f"ImageNet weights for {name} ({IMAGENET[name]}, {file}) are not in the torch hub cache "
        "and were not downloaded (no network, or downloads turned off)"
    )
    fix = (
        f"with network, run `retinopathy weights` once (it downloads {IMAGENET[name].url} into the "
        f"cache); offline, copy {file} into {PORTABLE_CACHE}, or set `{WEIGHTS_KEY}` in params.yaml "
        "to a local .pth state-dict file"
    )
    return reason, fix


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Give sockets opened without a timeout (torch.hub's download is one) this one, then restore."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _remove_dead_partials(cache: Path, timeout: float) -> None:
    """Delete torch.hub's ``<file>.<uuid>.partial`` files of downloads that were killed.

    A live download writes at least every ``timeout`` seconds (or gives up and
    deletes its own), so one untouched for twice as long belongs to no process.
    """
    if cache.parent.is_dir():
        for partial in cache.parent.glob(f"{cache.name}.*.partial"):
            with suppress(OSError):
                if time.time() - partial.stat().st_mtime > 2 * timeout:
                    partial.unlink()


def fetch_imagenet(name: str, download: bool = True, timeout: float = DOWNLOAD_TIMEOUT) -> tuple[Path, str]:
    """Make sure torchvision's ImageNet file for ``name`` is cached; return its path and SHA-256.

    Args:
        name: A name of the registry.
        download: Whether to download the file when it is not cached.
        timeout: Seconds the server may stay silent before the download gives up
            (a proxy that never answers would otherwise hang every `dvc repro`).

    Raises:
        WeightsUnavailableError: with the exact cache path, file name, URL and
            the params.yaml key to use instead, if the file is absent and
            cannot be downloaded (no network).
        CorruptWeightsError: if a cached file fails its hash check.
        RetinopathyError: for an unknown model name.
    """
    check_model_name(name)
    cache = imagenet_cache_file(name)
    if not cache.exists():
        reason, fix = offline_help(name)
        # The message has this machine's details (the cache path, the network error); the
        # reason and fix that go into committed outputs do not.
        detail = f"ImageNet weights for {name}: {cache} does not exist and "
        if not download:
            cause = f"downloads are disabled by --no-download or {NO_DOWNLOAD_ENV}=1"
            raise WeightsUnavailableError(f"{detail}{cause}; {fix}", reason, fix)
        _remove_dead_partials(cache, timeout)
        try:
            # check_hash: torchvision verifies the SHA-256 prefix in the file name. torch.hub
            # writes to a .partial file and deletes it when the download fails or times out.
            with _socket_timeout(timeout):
                IMAGENET[name].get_state_dict(progress=True, check_hash=True, weights_only=True)
        except (urllib.error.URLError, OSError, RuntimeError) as error:
            cause = str(error)
            if isinstance(error, TimeoutError) or "timed out" in cause:
                cause = f"no answer within {timeout:g} s: {error}"
            message = f"{detail}the download from {IMAGENET[name].url} failed ({cause}); {fix}"
            raise WeightsUnavailableError(message, reason, fix) from None
    return cache, _check_cached_hash(name, cache)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a torchvision-layout state dict, or the model of a checkpoint of this project.

    Raises:
        RetinopathyError: if the file is missing or holds something else.
    """
    path = Path(path)
    if not path.is_file():
        raise RetinopathyError(
            f"{path}: weights file not found; fix the path in `{WEIGHTS_KEY}` (params.yaml) or use `imagenet`"
        )
    obj: Any = load_tensors(
        path,
        "a PyTorch state-dict file (a plain state dict of tensors)",
        f"fix the path in `{WEIGHTS_KEY}` (params.yaml), or save one with "
        "torch.save(model.state_dict(), path)",
    )
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]  # a checkpoint written by `retinopathy train`
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise RetinopathyError(
            f"{path}: holds a {type(obj).__name__}, not a state dict of tensors; "
            "save one with torch.save(model.state_dict(), path)"
        )
    # Checkpoints saved from DataParallel/DDP or torch.compile prefix every key.
    for prefix in ("module.", "_orig_mod."):
        if obj and all(key.startswith(prefix) for key in obj):
            obj = {key[len(prefix) :]: value for key, value in obj.items()}
    return obj


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(state, strict=True)`` with a message that says what did not match."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:

        def few(items: list[str]) -> str:
            return ", ".join(items[:4]) + (f" (+{len(items) - 4} more)" if len(items) > 4 else "")

        problems = []
        if missing:
            problems.append(f"{len(missing)} keys missing: {few(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys: {few(unexpected)}")
        if shapes:
            problems.append(f"{len(shapes)} shapes differ: {few(shapes)}")
        raise RetinopathyError(
            f"{source}: does not fit {type(model).__name__} "
            f"({'; '.join(problems)}); use a torchvision-layout state dict of the same "
            "architecture as `model` in params.yaml"
        )
    model.load_state_dict(state, strict=True)


def build_model(
    name: str,
    num_classes: int = NUM_GRADES,
    weights: str | Path | None = None,
    zero_init_residual: bool = False,
) -> nn.Module:
    """A model ready for training.

    Args:
        name: A name of the registry (``registry.MODELS``).
        num_classes: outputs of the final Linear layer (5 grades).
        weights: ``None`` for random initialisation (the scratch arm);
            ``"imagenet"`` for torchvision's ImageNet-1k weights, from the
            TORCH_HOME cache or downloaded once with a hash check; or the path
            of a ``.pth``/``.pt`` file with a torchvision-layout state dict (or
            a checkpoint of this project).
        zero_init_residual: random initialisation only: every residual block
            starts as the identity (see :func:`new_model`).

    Pretrained weights are loaded strictly into a network whose final layer
    matches the file (1000 classes for ImageNet); the final Linear is then
    replaced by a fresh ``num_classes``-way one (the record's ``head``), as the lab does.

    Raises:
        RetinopathyError: unknown name, missing or incompatible file, or
            ImageNet weights that are neither cached nor downloadable.
    """
    if weights is None:
        return new_model(name, num_classes, zero_init_residual)
    if str(weights) == "imagenet":
        path, _ = fetch_imagenet(name)
        state = read_state_dict(path)
        source = f"{path} (torchvision {IMAGENET[name]})"
    else:
        path = Path(weights)
        state = read_state_dict(path)
        source = str(path)
    head = f"{architecture(name).head}.weight"
    if head not in state or state[head].dim() != 2:
        raise RetinopathyError(
            f"{source}: has no `{head}` (the final Linear of {name}), so it is not a "
            f"state dict of {name}; use a torchvision-layout state dict of the "
            "architecture `model` names in params.yaml"
        )
    model = new_model(name, num_classes=state[head].shape[0])
    load_strict(model, state, source)
    if head_of(model, name).out_features != num_classes:
        replace_head(model, name, num_classes)
    return model
