import pytest

from cfpo.advantages import group_advantages, is_zero_variance
from cfpo.rollout_group import RolloutGroup
from cfpo.sample import Sample


def test_grpo_normalises_by_the_group_std():
    # rewards 1, 0, 0, 1: mean 0.5, population std 0.5.
    assert group_advantages("grpo", [1.0, 0.0, 0.0, 1.0]) == [1.0, -1.0, -1.0, 1.0]


def test_grpo_guards_equal_rewards():
    assert group_advantages("grpo", [0.3, 0.3, 0.3]) == [0.0, 0.0, 0.0]
    assert is_zero_variance([0.3, 0.3, 0.3]) and not is_zero_variance([0.3, 0.4])


def test_one_zero_variance_rule_for_advantages_and_the_worker():
    # Rewards 1.5e-6 apart: std 7.5e-7, under the floor, so GRPO gives zero advantages; the worker's rule (on the
    # group) and the advantages' must agree, or a group with no gradient is trained instead of replaced.
    rewards = [0.0, 1.5e-6]
    assert group_advantages("grpo", rewards) == [0.0, 0.0]
    assert is_zero_variance(rewards)
    group = RolloutGroup(
        run_id="r",
        prompt_id="p",
        slot=0,
        samples=[
            Sample(
                prompt_ids=[1],
                completion_ids=[2],
                behaviour_logprobs=[-0.5],
                advantage=0.0,
                reward=r,
                min_version=0,
                max_version=0,
            )
            for r in rewards
        ],
    )
    assert group.zero_variance
    assert not is_zero_variance([0.0, 1e-3])


def test_rloo_leaves_one_out():
    assert group_advantages("rloo", [1.0, 0.0, 2.0]) == pytest.approx([0.0, -1.5, 1.5])


def test_drgrpo_only_centres():
    assert group_advantages("drgrpo", [1.0, 0.0, 2.0]) == pytest.approx([0.0, -1.0, 1.0])


def test_unknown_estimator_names_the_field():
    with pytest.raises(ValueError, match="^advantage:"):
        group_advantages("ppo", [1.0])
