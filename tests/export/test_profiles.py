import pytest

from trimkit.config import preset_config
from trimkit.contract import TOPK_MAX_K
from trimkit.errors import BadInputError
from trimkit.export.profiles import (
    Profile,
    check_shapes_in_profiles,
    max_topk_k,
    parse_profiles,
    shapes_outside,
)


@pytest.fixture
def config():
    return preset_config("tiny", vocab_size=30, num_labels=13)


def test_parse_one_and_several_profiles(config):
    (p,) = parse_profiles(["batch=1:4:16", "text=2:8:16"], None, config)
    assert p == Profile(batch=(1, 4, 16), text=(2, 8, 16))
    ps = parse_profiles(["batch=1:4:16"], ["batch=1:1:1,text_len=2:4:8", "text=16"], config)
    assert len(ps) == 3
    assert ps[0].text == (2, 16, 16)  # default text axis: 2:max:max
    assert ps[1] == Profile(batch=(1, 1, 1), text=(2, 4, 8))
    assert ps[2] == Profile(batch=(1, 8, 8), text=(16, 16, 16))  # default batch axis: verify's 1 and 8
    shapes = ps[1].input_shapes(config)
    assert shapes["pixel_values"] == ((1, 3, 32, 32),) * 3
    assert shapes["input_ids"] == ((1, 2), (1, 4), (1, 8))
    assert ps[0].contains(16, 2) and not ps[0].contains(17, 2)
    assert parse_profiles(None, None, config) == [Profile(batch=(1, 8, 8), text=(2, 16, 16))]


@pytest.mark.parametrize("items,message", [
    (["batch=4:2:8"], "min <= opt <= max"),
    (["text=2:8:17"], "exceeds the model's max_text_len"),
    (["text=1:2:3"], "text length must be >= 2"),
    (["batch=0:1:2"], "batch must lie"),
    (["pixels=1:1:1"], "unknown axis"),
    (["batch=a:b:c"], "integers"),
    (["batch"], "NAME=min:opt:max"),
    (["batch=1:2"], "min:opt:max"),
    (["batch=1:1:1", "batch=2:2:2"], "given twice"),
])
def test_profile_errors(config, items, message):
    with pytest.raises(BadInputError, match=message):
        parse_profiles(items, None, config)


def test_topk_limit():
    big = preset_config("tiny", image_size=1024, patch_size=16)  # 4097 vision tokens
    assert max_topk_k([Profile((1, 1, 1), (2, 8, 16))], big) == 4097 > TOPK_MAX_K
    with pytest.raises(BadInputError, match="3840"):
        parse_profiles(None, None, big)
    ok = preset_config("tiny", image_size=960, patch_size=16)  # 3601 tokens
    assert parse_profiles(None, None, ok)
    # a graph that sorts the batch's samples (attention runs: 65 image tokens at width 64) bounds the batch too
    runs = preset_config("tiny", image_size=64)
    assert parse_profiles(["batch=1:8:3840"], None, runs)
    with pytest.raises(BadInputError, match="sorts a batch's samples"):
        parse_profiles(["batch=1:8:3841"], None, runs)
    assert parse_profiles(["batch=1:8:4096"], None, preset_config("tiny"))  # 17 image tokens: no runs, no sort


def test_default_profile_takes_verify_default_shapes(config):
    profiles = parse_profiles(None, None, config)
    shapes = [(b, n) for b in (1, 8) for n in range(2, config.max_text_len + 1)]
    assert shapes_outside(profiles, shapes) == []
    check_shapes_in_profiles(profiles, shapes, "m.plan")


def test_shapes_outside_every_profile_are_named(config):
    profiles = [Profile((1, 4, 4), (2, 8, 8)), Profile((8, 8, 8), (2, 16, 16))]
    assert shapes_outside(profiles, [(4, 8), (4, 9), (8, 16), (4, 9), (5, 3)]) == [(4, 9), (5, 3)]
    with pytest.raises(BadInputError, match=r"m.plan: batch 4 x text 9, batch 5 x text 3 outside every "
                                            r"optimization profile \(batch 1..4, text 2..8; batch 8..8"):
        check_shapes_in_profiles(profiles, [(1, 2), (4, 9), (5, 3)], "m.plan")
