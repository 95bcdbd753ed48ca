import pytest

from i3d_fast.padding import output_size, resolve_padding, same_padding


@pytest.mark.parametrize("size, kernel, stride, expected", [
    (224, 7, 2, (2, 3)),   # Conv3d_1a spatially: the odd cell goes at the end
    (64, 7, 2, (2, 3)),    # Conv3d_1a in time for 64 frames
    (79, 7, 2, (3, 3)),    # ... and for the 79-frame sample clip
    (112, 3, 2, (0, 1)),   # MaxPool3d_2a spatially
    (56, 3, 2, (0, 1)),    # MaxPool3d_3a
    (28, 3, 2, (0, 1)),    # MaxPool3d_4a
    (14, 2, 2, (0, 0)),    # MaxPool3d_5a
    (28, 3, 1, (1, 1)),    # 3x3x3 stride 1
    (5, 1, 1, (0, 0)),
    (3, 7, 1, (3, 3)),     # kernel larger than the input
])
def test_same_padding_matches_hand_computed_cases(size, kernel, stride, expected):
    assert same_padding(size, kernel, stride) == expected
    before, after = expected
    assert output_size(size, kernel, stride, expected) == -(-size // stride)


def test_resolve_padding_forms():
    assert resolve_padding((79, 224, 224), (7, 7, 7), (2, 2, 2), "same") == ((3, 3), (2, 3), (2, 3))
    assert resolve_padding((8, 8, 8), (3, 3, 3), (1, 1, 1), "VALID") == ((0, 0), (0, 0), (0, 0))
    assert resolve_padding((8, 8, 8), (3, 3, 3), (1, 1, 1), 1) == ((1, 1), (1, 1), (1, 1))
    assert resolve_padding((8, 8, 8), (3, 3, 3), (1, 1, 1), (0, (1, 2), 1)) == ((0, 0), (1, 2), (1, 1))
    with pytest.raises(ValueError, match="padding"):
        resolve_padding((8, 8, 8), (3, 3, 3), (1, 1, 1), "reflect")
    with pytest.raises(ValueError, match="non-negative"):
        resolve_padding((8, 8, 8), (3, 3, 3), (1, 1, 1), (0, -1, 0))
