import typing

import pytest
from pydantic import ValidationError

from cfpo.config import ConfigError, LearnerConfig, LossConfig, LossName, load_config, read_yaml_mapping
from trainer.losses import LOSSES


def test_config_names_every_registered_loss():
    assert set(typing.get_args(LossName)) == set(LOSSES)


@pytest.mark.parametrize(
    "settings, field",
    [
        ({"batch_size": 12, "minibatches": 5}, "minibatches"),
        ({"batch_size": 12, "minibatches": 2, "micro_batch_size": 4}, "micro_batch_size"),
        ({"iterations": 0}, "iterations"),
        ({"zero_stage": 4}, "zero_stage"),
        ({"lr": 1e-3}, "lr"),  # belongs under optimizer: unknown keys are refused, not ignored
    ],
)
def test_bad_learner_settings_name_the_field(settings, field):
    with pytest.raises(ValidationError, match=field):
        LearnerConfig(**settings)


def test_loss_settings_validate():
    with pytest.raises(ValidationError, match="eps_high"):
        LossConfig(name="grpo", eps_high=0.28)
    with pytest.raises(ValidationError, match="name"):
        LossConfig(name="ppo2")


def test_shipped_learner_config_loads():
    config = load_config(LearnerConfig, "configs/learner-demo.yaml")
    assert config.loss.name == "cfpo" and config.iterations == 16


def test_config_file_errors_name_file_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss:\n  name: ppo2\niterations: 0\n")
    with pytest.raises(ConfigError) as error:
        load_config(LearnerConfig, bad)
    message = str(error.value)
    assert message.startswith(str(bad)) and "loss.name" in message and "iterations" in message


def test_broken_yaml_is_one_line_naming_file_and_place(tmp_path):
    broken = tmp_path / "learner.yaml"
    broken.write_text("loss:\n  name: cfpo\n  eps: [0.2\n")
    with pytest.raises(ConfigError) as caught:
        load_config(LearnerConfig, broken)
    message = str(caught.value)
    assert message.startswith(f"{broken}: not valid YAML: ") and "line 4" in message and "\n" not in message


def test_dr_grpo_constant_defaults_to_the_longest_completion():
    # Dr.GRPO divides each response's token sum by one constant; the learner's micro-batches are cut to their own
    # width, so a width-based default would change from micro-batch to micro-batch.
    from cfpo.run_spec import RunSpec

    on_policy = {"mode": "fixed", "k": 0}
    derived = RunSpec(
        model="/m",
        rollout={"max_tokens": 48},
        staleness=on_policy,
        learner={"loss": {"name": "grpo", "agg": "seq-mean-token-sum-norm"}},
    )
    assert derived.learner.loss.norm_length == 48
    given = RunSpec(
        model="/m",
        rollout={"max_tokens": 48},
        staleness=on_policy,
        learner={"loss": {"agg": "seq-mean-token-sum-norm", "norm_length": 100}},
    )
    assert given.learner.loss.norm_length == 100
    assert RunSpec(model="/m", staleness=on_policy).learner.loss.norm_length is None  # other aggregations: none
    assert RunSpec.model_validate_json(derived.model_dump_json()) == derived
    with pytest.raises(ValidationError, match="norm_length: required for seq-mean-token-sum-norm"):
        LossConfig(name="grpo", agg="seq-mean-token-sum-norm")  # outside a run spec nothing derives it


def test_cispo_lower_bound_is_off_unless_given():
    assert LossConfig(name="cispo").cispo_eps_low is None
    with pytest.raises(ValidationError, match="cispo_eps_low"):
        LossConfig(name="cispo", cispo_eps_low=1.5)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"rollout": {"group_size": 10**6}}, "rollout.group_size"),
        ({"rollout": {"max_tokens": 10**9}}, "rollout.max_tokens"),
        ({"rollout": {"prompts_per_step": 4096, "group_size": 1024}}, "rollout.prompts_per_step x rollout.group_size"),
        ({"steps": 10**9}, "steps"),
        ({"learner": {"iterations": 10**4}}, "learner.iterations"),
        (
            {"staleness": {"mode": "fixed", "k": 10**6}, "learner": {"loss": {"ratio_reference": "proximal"}}},
            "staleness",
        ),
        ({"evaluation": {"problems": 10**7}}, "evaluation.problems"),
        ({"task": {"kind": "arithmetic", "train_size": 10**9}}, "task.arithmetic.train_size"),
    ],
)
def test_absurd_sizes_are_refused_naming_the_field(changes, field):
    from cfpo.config import describe_validation_error
    from cfpo.run_spec import RunSpec

    with pytest.raises(ValidationError) as refused:
        RunSpec.model_validate({"model": "models/tiny", **changes})
    assert describe_validation_error(refused.value).startswith(field)


def test_yaml_reads_an_exponent_without_a_dot_as_a_number(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("lr: 1e-6\nsteps: 20\nbig: -2E3\nname: 1e-6x\n")
    assert read_yaml_mapping(path) == {"lr": 1e-6, "steps": 20, "big": -2000.0, "name": "1e-6x"}
