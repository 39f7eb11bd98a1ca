import numpy as np
import pytest
import torch
from PIL import Image

from engine.backbone import (
    BackboneError,
    available_backbones,
    create_backbone,
    effnet_lite0_classifier,
    load_checkpoint,
    save_checkpoint,
)

ESPRESSO, CUP, COFFEE_MUG = 967, 968, 504


def test_imagenet_weights_are_real_coffee_is_espresso():
    from skimage import data

    model = effnet_lite0_classifier()
    img = Image.fromarray(data.coffee()).resize((224, 224), Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.asarray(img)).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        logits = model((x - 0.5) / 0.5)
    top5 = logits.topk(5).indices[0].tolist()
    assert {ESPRESSO, CUP, COFFEE_MUG} & set(top5), top5


def test_effnet_features_are_stride_16_with_112_channels(effnet):
    with torch.no_grad():
        out = effnet(torch.rand(2, 3, 160, 224))
    assert out.shape == (2, 112, 10, 14)
    assert effnet.model_id == "effnet-lite0" and effnet.channels == 112


def test_random_backbone_only_by_name_and_differs(effnet, random_effnet):
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(effnet(x), random_effnet(x))
        # the random baseline is the same on every run
        assert torch.allclose(random_effnet(x), create_backbone("random-effnet-lite0")(x))


def test_resnet18_architecture_is_conv4_256_channels():
    model = create_backbone("random-resnet18")
    with torch.no_grad():
        assert model(torch.rand(1, 3, 128, 96)).shape == (1, 256, 8, 6)


def test_unknown_model_names_the_choices():
    with pytest.raises(BackboneError, match="effnet-lite0"):
        create_backbone("vgg99")
    assert "resnet18" in available_backbones()


def test_resnet18_weights_with_wrong_hash_are_refused(tmp_path):
    fake = tmp_path / "resnet18.pth"
    torch.save({"x": torch.zeros(1)}, fake)
    with pytest.raises(BackboneError, match="does not match"):
        create_backbone("resnet18", weights=str(fake))


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(BackboneError, match="not found"):
        create_backbone("effnet-lite0", weights=str(tmp_path / "nope.pth"))


def test_checkpoint_round_trip_keeps_weights_and_lineage(tmp_path, random_effnet):
    ref = save_checkpoint(random_effnet, tmp_path / "m.pt", parent="random-effnet-lite0", config={"lr": 1e-5})
    assert ref.model_id.startswith("effnet-lite0@") and ref.parent == "random-effnet-lite0"
    loaded = create_backbone(str(tmp_path / "m.pt"))
    assert loaded.model_id == ref.model_id and loaded.ref.parent == "random-effnet-lite0"
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x), random_effnet(x))


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneError, match="not an ArtMiner checkpoint"):
        load_checkpoint(bad)
