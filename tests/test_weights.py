"""Initial weights: scratch, a state-dict file, the ImageNet cache path, and offline errors.

No test touches the network: the download is replaced by a function that fails
the way urllib does when there is no network. The only weights used are ones
the tests write themselves from freshly initialised torchvision models.
"""

import json
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm
import torchvision.models._api as tv_api

from conftest import write_params
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.files import sha256_of
from retinopathy.models import build
from retinopathy.stages import weights


@pytest.fixture()
def torch_home(tmp_path, monkeypatch):
    """An empty TORCH_HOME and a download that fails like a machine with no network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", no_network)
    return tmp_path / "torch-home"


def write_torchvision_state(path: Path, arch: str = "resnet18") -> dict:
    torch.manual_seed(123)
    state = getattr(tvm, arch)().state_dict()
    torch.save(state, path)
    return state


def test_scratch_is_random_and_five_way():
    model = build.build_model("resnet18")
    assert model.fc.out_features == 5


def test_unknown_model_lists_choices():
    with pytest.raises(RetinopathyError, match="resnet18, resnet50"):
        build.build_model("resnet34")


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_file_weights_load_backbone_and_replace_fc(tmp_path, arch):
    path = tmp_path / "test-written.pth"
    state = write_torchvision_state(path, arch)
    model = build.build_model(arch, num_classes=5, weights=path)
    mine = model.state_dict()
    for key, value in state.items():
        if not key.startswith("fc."):
            assert torch.equal(mine[key], value), key
    assert model.fc.out_features == 5
    assert model.fc.in_features == state["fc.weight"].shape[1]


def test_checkpoint_of_this_project_loads(tmp_path):
    source = build.build_model("resnet18")
    path = tmp_path / "last.pt"
    torch.save({"model": source.state_dict(), "epoch": 3}, path)
    model = build.build_model("resnet18", weights=path)
    assert torch.equal(model.fc.weight, source.fc.weight)  # 5-way fc kept, not replaced


def test_missing_file_is_an_error_not_random_init(tmp_path):
    with pytest.raises(RetinopathyError, match=r"nope\.pth: weights file not found.*train\.weights"):
        build.build_model("resnet18", weights=tmp_path / "nope.pth")


def test_incompatible_file_names_what_did_not_match(tmp_path):
    path = tmp_path / "r50.pth"
    write_torchvision_state(path, "resnet50")
    with pytest.raises(RetinopathyError, match=r"r50\.pth.*shapes differ.*conv1"):
        build.build_model("resnet18", weights=path)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(RetinopathyError, match=r"junk\.pth: not a PyTorch state-dict file"):
        build.build_model("resnet18", weights=junk)


def test_offline_error_names_cache_path_file_url_and_param(torch_home):
    with pytest.raises(RetinopathyError) as caught:
        build.build_model("resnet50", weights="imagenet")
    message = str(caught.value)
    cache = torch_home / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    assert str(cache) in message
    assert "resnet50-0676ba61.pth" in message
    assert "https://download.pytorch.org/models/resnet50-0676ba61.pth" in message
    assert "train.weights" in message


def test_cached_file_is_hash_checked(torch_home):
    cache = build.imagenet_cache_file("resnet18")
    assert cache == torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cache.parent.mkdir(parents=True)
    write_torchvision_state(cache)  # right name, wrong content: not torchvision's file
    with pytest.raises(RetinopathyError, match="does not match the hash f37072fd"):
        build.build_model("resnet18", weights="imagenet")


def test_manifests_offline_and_with_file(tmp_path, torch_home, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path)
    assert weights.main([]) == 0
    scratch = json.loads(Path("models/init/scratch.json").read_text())
    skipped = json.loads(Path("models/init/pretrained.json").read_text())
    assert scratch["available"] and scratch["source"] == "random"
    assert skipped["available"] is False
    assert "resnet18-f37072fd.pth" in skipped["reason"] and "train.weights" in skipped["fix"]

    path = tmp_path / "test-written.pth"
    write_torchvision_state(path)
    write_params(tmp_path, train={"weights": str(path)})
    assert weights.main([]) == 0
    manifest = json.loads(Path("models/init/pretrained.json").read_text())
    assert manifest["available"] and manifest["source"] == "file"
    assert manifest["sha256"] == sha256_of(path)
    assert "imagenet" not in json.dumps(manifest).lower()


def test_a_corrupt_cached_file_stops_the_weights_stage_instead_of_skipping(tmp_path, torch_home, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path)
    cache = build.imagenet_cache_file("resnet18")
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"garbage")
    with pytest.raises(build.CorruptWeightsError, match="delete it and download it again"):
        weights.main([])
    assert not Path("models/init/pretrained.json").exists()
