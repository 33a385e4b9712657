"""Full and surgical fine-tuning: what moves, what must not, and best-on-val restoration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medzoo.errors import MedzooError
from medzoo.finetune import FinetuneConfig, finetune, predict_probs
from medzoo.models import group_of

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
CPU = torch.device("cpu")
TINY = FinetuneConfig(
    min_steps=4,
    max_steps=4,
    eval_every_steps=2,
    lr=1e-2,
    head_lr=1e-2,
    batch_size=4,
    patience=5,
    eval_batch_size=8,
    augment=False,
)


def _data(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    return images, torch.arange(n) % 3


def _model() -> torch.nn.Module:
    from medzoo.zoo.index import load

    return load("random-r18", num_classes=3)


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_surgical_changes_only_the_chosen_groups_and_the_head():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, labels = _data()
    result = finetune(
        model, images, labels, images[:4], labels[:4], config=TINY, mean=MEAN, std=STD,
        in_chans=3, device=CPU, trainable_groups=["layer4"],
    )  # fmt: skip
    changed = _changed(before, result.model.state_dict())
    groups = {group_of(k) for k in changed}
    assert groups <= {"layer4", "head"}
    assert "fc.weight" in changed and any(k.startswith("layer4.") for k in changed)
    # frozen BatchNorm layers stayed in eval mode: their running statistics did not move
    for key in before:
        if key.startswith(("bn1.", "layer1.", "layer2.", "layer3.")):
            assert torch.equal(before[key], result.model.state_dict()[key]), key
    # layer4's own BatchNorm trains, so its running statistics do move
    assert "layer4.1.bn2.running_mean" in changed


def test_full_finetune_moves_the_stem_and_restores_the_best_step():
    model = _model()
    stem_before = model.conv1.weight.clone()
    images, labels = _data()
    result = finetune(
        model, images, labels, images[:4], labels[:4], config=TINY, mean=MEAN, std=STD,
        in_chans=3, device=CPU, seed=1,
    )  # fmt: skip
    assert not torch.equal(stem_before, result.model.conv1.weight)
    assert result.steps == TINY.max_steps and result.best_step in (2, 4)
    assert [h["step"] for h in result.history] == [2, 4]  # validation every 2 steps
    best = max(h["val_accuracy"] for h in result.history)
    assert result.val_accuracy == best
    # the restored weights are the best step's: re-measuring val reproduces its accuracy
    probs = predict_probs(result.model, images[:4], MEAN, STD, in_chans=3, device=CPU)
    assert float((probs.argmax(1) == labels[:4].numpy()).mean()) == pytest.approx(best)


def test_predict_probs_are_probabilities():
    probs = predict_probs(_model(), _data(5)[0], MEAN, STD, in_chans=3, device=CPU, batch_size=2)
    assert probs.shape == (5, 3)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)


def test_grayscale_images_feed_a_one_channel_model_and_augment_is_used():
    from medzoo.zoo.index import load

    model = load("random-r18", num_classes=3, in_chans=1)
    images = _data()[0][:, :1]
    labels = torch.arange(8) % 3
    calls = []

    def augment(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape)
        return (x.float() / 255 - 0.5) / 0.25

    finetune(
        model, images, labels, images[:3], labels[:3], config=FinetuneConfig(min_steps=2, max_steps=2, eval_every_steps=2, batch_size=4, augment=True),
        mean=(0.5,), std=(0.25,), in_chans=1, device=CPU, augment=augment, train_subset=np.arange(6),
    )  # fmt: skip
    assert calls and all(shape[1] == 1 for shape in calls)
    assert sum(shape[0] for shape in calls) == 6  # two steps of 4 + 2: one pass over the subset


def test_too_few_images_is_an_error():
    images, labels = _data(1)
    with pytest.raises(MedzooError, match="at least 2"):
        finetune(
            _model(),
            images,
            labels,
            images,
            labels,
            config=TINY,
            mean=MEAN,
            std=STD,
            in_chans=3,
            device=CPU,
        )


@pytest.mark.gpu
def test_cuda_bf16_channels_last_finetune_and_features_match_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from medzoo.probe import extract_features
    from medzoo.zoo.index import load

    cuda = torch.device("cuda")
    images, labels = _data(16)
    cpu_features = extract_features(load("random-r18"), images, MEAN, STD, in_chans=3, device=CPU)
    gpu_features = extract_features(load("random-r18"), images, MEAN, STD, in_chans=3, device=cuda)
    torch.testing.assert_close(gpu_features, cpu_features, rtol=1e-2, atol=1e-2)  # TF32 convs
    result = finetune(
        _model(), images, labels, images[:8], labels[:8], config=TINY, mean=MEAN, std=STD,
        in_chans=3, device=cuda, trainable_groups=["layer4"], precision="auto",
    )  # fmt: skip
    assert next(result.model.parameters()).is_cuda and result.steps >= 1
    probs = predict_probs(result.model, images, MEAN, STD, in_chans=3, device=cuda)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-3)
