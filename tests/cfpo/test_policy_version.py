import pytest

from cfpo.clients.generation import GenerationError, PolicyVersion


@pytest.mark.parametrize(
    "label, parsed",
    [
        ("default", PolicyVersion(None, 0)),
        ("7", PolicyVersion(None, 7)),
        ("run-1@12", PolicyVersion("run-1", 12)),
        ("a@b@3", PolicyVersion("a@b", 3)),
    ],
)
def test_labels_round_trip(label, parsed):
    assert PolicyVersion.parse(label) == parsed
    if label != "default":
        assert parsed.label == label


def test_a_foreign_label_is_an_error():
    with pytest.raises(GenerationError, match="not \\[run@\\]number"):
        PolicyVersion.parse("v1.2")
