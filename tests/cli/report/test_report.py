"""`cfpo report` on small synthetic runs: table values against hand-computed numbers, figures, errors."""

import json
import struct

import pytest
from typer.testing import CliRunner

from cfpo.cli.app import app
from cfpo.cli.report import buckets_figure, load_run, load_runs, metrics_figure, staleness_buckets, summarise
from tests.cli.figures import title_problems

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_run(path, steps=6, buckets=True, spec_loss=None, warm_up_steps=0, spec_anchor=None):
    """A run of ``steps`` steps with two optimizer-step rows each, whose per-step values are easy to derive.

    Step s, against the behaviour policy: clip_frac rows 0.01s and 0.01s + 0.02 (step mean 0.01s + 0.01); kl_k3
    rows 0.001s and 0.003s (mean 0.002s); tv rows 0.05 and 0.07; ratio_max 1 + 0.1s, ratio_min 1 - 0.05s. Against
    the proximal policy: half of clip_frac and kl_k3, tv rows 0 and 0.01, ratios 1. ESS rows 1 - 0.05s and
    1 - 0.05s - 0.02 against the behaviour policy (mean 0.99 - 0.05s), 1 and 0.99 against the proximal one. Reward
    0.1(s+1); entropy rows 2 - 0.1s ± 0.05; staleness_max rows 0 and s // 2; grad_norm rows 1 + 0.1s and
    1.2 + 0.1s, NaN at step 0 (as a ZeRO stage that reports none).
    """
    path.mkdir(parents=True)
    rows = []
    for s in range(steps):
        for i, sign in enumerate((-1, 1)):
            row = {
                "step": s,
                "version": 2 * s + i + 1,
                "iteration": i,
                "minibatch": 0,
                "warm_up": s < warm_up_steps,
                "reward_mean": 0.1 * (s + 1),
                "behaviour_clip_frac": 0.01 * s + 0.02 * i,
                "behaviour_kl_k3": 0.001 * s * (1 + 2 * i),
                "behaviour_tv": 0.05 + 0.02 * i,
                "behaviour_ratio_max": 1 + 0.1 * s,
                "behaviour_ratio_min": 1 - 0.05 * s,
                "proximal_clip_frac": 0.005 * s + 0.01 * i,
                "proximal_kl_k3": 0.0005 * s * (1 + 2 * i),
                "proximal_tv": 0.01 * i,
                "proximal_ratio_max": 1.0,
                "proximal_ratio_min": 1.0,
                "behaviour_ess": 1 - 0.05 * s - 0.02 * i,
                "proximal_ess": 1 - 0.01 * i,
                "entropy": 2 - 0.1 * s + sign * 0.05,
                "staleness_mean": 0.25 * i,
                "staleness_max": (s // 2) * i,
                "grad_norm": float("nan") if s == 0 else 1 + 0.1 * s + 0.2 * i,
            }
            if buckets:
                row["behaviour_clip_frac/staleness_0"] = 0.0
                row["behaviour_kl_k3/staleness_0"] = 0.0
                if s >= 2:
                    row["behaviour_clip_frac/staleness_3-4"] = 0.2
                    row["behaviour_kl_k3/staleness_3-4"] = 0.1
            rows.append(row)
    (path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    if spec_loss:
        anchor = f", ratio_reference: {spec_anchor}" if spec_anchor else ""
        (path / "spec.yaml").write_text(f"model: /m\nlearner:\n  loss: {{name: {spec_loss}{anchor}}}\n")
    return path


def report(*args):
    return CliRunner().invoke(app, ["report", *map(str, args)])


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_summary_matches_hand_computed_values(tmp_path):
    summary = summarise(load_run(write_run(tmp_path / "run")))

    assert summary.steps == 6
    assert summary.final_reward == pytest.approx((0.2 + 0.3 + 0.4 + 0.5 + 0.6) / 5)  # last 5 steps
    behaviour, proximal = summary.against["behaviour"], summary.against["proximal"]
    assert behaviour.clip_frac_max == pytest.approx(0.06)  # max of step means, not the 0.07 of one row
    assert behaviour.clip_frac_mean == pytest.approx(0.035)
    assert behaviour.kl_k3_max == pytest.approx(0.010)
    assert behaviour.tv_mean == pytest.approx(0.06)
    assert behaviour.ratio_deviation_max == pytest.approx(0.5)  # ratio_max 1.5 at step 5
    assert (proximal.clip_frac_max, proximal.kl_k3_max, proximal.tv_mean) == pytest.approx((0.03, 0.005, 0.005))
    assert proximal.ratio_deviation_max == 0
    assert (behaviour.ess_min, proximal.ess_min) == pytest.approx((0.74, 0.995))  # the smallest step mean
    assert (summary.entropy_first, summary.entropy_last) == (pytest.approx(2.0), pytest.approx(1.5))
    assert summary.staleness_max == 2  # *_max keys reduce by max: the step mean would give 1
    assert summary.grad_norm_max == pytest.approx(1.6)  # step 5's mean; step 0's NaN is no value


def test_warm_up_steps_are_left_out_of_the_summary_unless_all_are_asked_for(tmp_path):
    # Steps 0-1 are warm-up (logged warm_up: staleness not yet at its target); the steady state is steps 2-5.
    run = load_run(write_run(tmp_path / "run", warm_up_steps=2))
    steady, everything = summarise(run), summarise(run, all_steps=True)

    assert (steady.steps, steady.warm_up_left_out) == (4, 2)
    assert steady.against["behaviour"].clip_frac_mean == pytest.approx((0.03 + 0.04 + 0.05 + 0.06) / 4)
    assert steady.against["behaviour"].tv_mean == pytest.approx(0.06)
    assert steady.entropy_first == pytest.approx(1.8)  # step 2's, the first steady step
    assert (everything.steps, everything.warm_up_left_out) == (6, 0)
    assert everything.against["behaviour"].clip_frac_mean == pytest.approx(0.035)

    out = tmp_path / "out"
    assert report(tmp_path / "run", "--out", out).exit_code == 0
    assert "| 4 + 2 |" in (out / "report.md").read_text()
    assert report(tmp_path / "run", "--out", out, "--all-steps").exit_code == 0
    assert "| 6 |" in (out / "report.md").read_text()


def test_report_writes_table_and_valid_figures(tmp_path):
    out = tmp_path / "out"
    result = report(write_run(tmp_path / "run-a"), "--out", out)

    assert result.exit_code == 0, result.output
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["metrics.png", "staleness_buckets.png"]
    for png in pngs:
        width, height = png_size(png)
        assert width > 300 and height > 300
    markdown = (out / "report.md").read_text()
    assert (
        "| run-a | – | 6 | 0.4 | 0.06 / 0.03 | 0.035 / 0.0175 | 0.01 / 0.005 | 0.06 / 0.005 | 0.74 / 0.995 "
        "| 2 → 1.5 | 2 | 1.6 |" in markdown
    )
    for png in pngs:
        assert f"]({png.name})" in markdown  # relative to report.md
    assert "run-a" in result.output and str(out / "report.md") in result.output


def test_every_title_reads_whole(tmp_path):
    """metrics.png's clip-fraction and KL titles once ran into each other, the KL one cut off at the edge."""
    runs = load_runs(
        [write_run(tmp_path / name, spec_loss=loss) for name, loss in (("demo-0123456789ab", "cfpo"), ("b", "grpo"))]
    )
    assert title_problems(metrics_figure(runs)) == []
    assert title_problems(buckets_figure(runs, staleness_buckets(runs))) == []


def test_no_bucket_keys_no_bucket_figure(tmp_path):
    out = tmp_path / "out"
    (out).mkdir()
    (out / "staleness_buckets.png").write_bytes(PNG_SIGNATURE)  # from an earlier report

    assert report(write_run(tmp_path / "run", buckets=False), "--out", out).exit_code == 0
    assert [p.name for p in out.glob("*.png")] == ["metrics.png"]
    assert "staleness_buckets" not in (out / "report.md").read_text()


def test_runs_compared_with_labels(tmp_path):
    out = tmp_path / "out"
    result = report(
        write_run(tmp_path / "a" / "run"), write_run(tmp_path / "b" / "run", steps=3, spec_loss="grpo"), "--out", out
    )

    assert result.exit_code == 0, result.output
    markdown = (out / "report.md").read_text()
    # same directory name twice: labelled by the path given; the spec's loss is added
    assert f"| {tmp_path / 'a' / 'run'} | – | 6 |" in markdown
    assert f"| {tmp_path / 'b' / 'run'} (grpo) | – | 3 |" in markdown
    assert len(list(out.glob("*.png"))) == 2


def test_loss_label_and_anchor_from_spec(tmp_path):
    run = load_run(write_run(tmp_path / "run-x", spec_loss="cfpo", spec_anchor="proximal"))
    assert (run.label, run.anchor) == ("run-x (cfpo)", "proximal")
    assert (load_run(write_run(tmp_path / "run-y")).label, load_run(tmp_path / "run-y").anchor) == ("run-y", None)


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda run: (run / "metrics.jsonl").unlink(), "metrics.jsonl: not found"),
        (lambda run: (run / "metrics.jsonl").write_text(""), "metrics.jsonl: empty"),
        (
            lambda run: (run / "metrics.jsonl").write_text('{"step": 0}\n{"step": 1, "clip_fr\n'),
            "metrics.jsonl:2: not valid JSON",
        ),
        (lambda run: (run / "metrics.jsonl").write_text('{"step": 0}\n[1, 2]\n'), "metrics.jsonl:2: not a metrics row"),
    ],
)
def test_bad_run_is_a_clear_error_and_nothing_is_written(tmp_path, damage, expected):
    good, bad, out = write_run(tmp_path / "good"), write_run(tmp_path / "bad"), tmp_path / "out"
    damage(bad)

    result = report(good, bad, "--out", out)

    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit)  # no traceback
    assert f"error: {bad / expected.split(':')[0]}" in result.output and expected in result.output
    assert not out.exists()


def test_every_bad_run_is_listed(tmp_path):
    result = report(tmp_path / "missing", write_run(tmp_path / "ok"), tmp_path / "ok" / "metrics.jsonl")

    assert result.exit_code == 2
    assert f"{tmp_path / 'missing'}: no such directory" in result.output
    assert f"{tmp_path / 'ok' / 'metrics.jsonl'}: no such directory" in result.output
