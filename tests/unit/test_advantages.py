import pytest

from cfpo.advantages import group_advantages, is_zero_variance


def test_grpo_normalises_by_the_group_std():
    # rewards 1, 0, 0, 1: mean 0.5, population std 0.5.
    assert group_advantages("grpo", [1.0, 0.0, 0.0, 1.0]) == [1.0, -1.0, -1.0, 1.0]


def test_grpo_guards_equal_rewards():
    assert group_advantages("grpo", [0.3, 0.3, 0.3]) == [0.0, 0.0, 0.0]
    assert is_zero_variance([0.3, 0.3, 0.3]) and not is_zero_variance([0.3, 0.4])


def test_rloo_leaves_one_out():
    assert group_advantages("rloo", [1.0, 0.0, 2.0]) == pytest.approx([0.0, -1.5, 1.5])


def test_drgrpo_only_centres():
    assert group_advantages("drgrpo", [1.0, 0.0, 2.0]) == pytest.approx([0.0, -1.0, 1.0])


def test_unknown_estimator_names_the_field():
    with pytest.raises(ValueError, match="^advantage:"):
        group_advantages("ppo", [1.0])
