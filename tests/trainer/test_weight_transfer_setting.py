"""The weight transport is one setting of the learner and of ``cfpo serve generation``: file works on CPU, the
CUDA-only transports are refused at start with the setting's name, not left to fail (or hang) at the first push."""

import pytest
import torch

from cfpo.clients.generation import GenerationClient
from services.generation.__main__ import ENTRYPOINT as GENERATION
from services.generation.launch import server_command
from trainer.__main__ import parse_settings as parse_learner_settings
from trainer.weight_sync import open_weight_sync
from trainer.weight_sync.file import FileWeightSync

ONE_RUN = ["--spec", "spec.yaml", "--run-id", "r", "--run-dir", "runs/r"]
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


def test_the_file_transport_is_the_default_and_what_the_learner_opens(tmp_path, monkeypatch):
    monkeypatch.delenv("CFPO_WEIGHT_TRANSFER", raising=False)
    settings = parse_learner_settings(ONE_RUN)
    assert settings.weight_transfer == "file" and settings.staging_dir.as_posix() == "runs/r/weights"
    transport = open_weight_sync(
        settings.weight_transfer,
        [GenerationClient("http://127.0.0.1:1")],
        staging_dir=settings.staging_dir,
        master_address=settings.weight_transfer_address,
        master_port=settings.weight_transfer_port,
    )
    assert isinstance(transport, FileWeightSync)


@pytest.mark.parametrize("transfer", ["nccl", "ipc"])
def test_cuda_transports_are_refused_without_cuda(transfer, tiny_model_dir, monkeypatch, capsys):
    with pytest.raises(SystemExit) as learner_exit:
        parse_learner_settings([*ONE_RUN, "--weight-transfer", transfer])
    monkeypatch.setenv("CFPO_WEIGHT_TRANSFER", transfer)  # the same setting, from the environment
    with pytest.raises(SystemExit) as generation_exit:
        GENERATION.parse(["--model", str(tiny_model_dir)])
    assert learner_exit.value.code == generation_exit.value.code == 2
    errors = capsys.readouterr().err.splitlines()
    assert (
        errors
        == [
            f"error: weight_transfer: {transfer} needs CUDA (vLLM's {transfer} engine is CUDA-only) and "
            "this machine has none; use file"
        ]
        * 2
    )


def test_generation_starts_vllms_engine_for_the_transport(tiny_model_dir, monkeypatch):
    monkeypatch.delenv("CFPO_WEIGHT_TRANSFER", raising=False)
    argv, env = server_command(GENERATION.parse(["--model", str(tiny_model_dir)]))
    assert "--weight-transfer-config" not in argv and "VLLM_ALLOW_INSECURE_SERIALIZATION" not in env
    on_a_gpu = GENERATION.parse(
        ["--model", str(tiny_model_dir), "--device", "cuda", "--weight-transfer", "ipc", "--tensor-parallel-size", "2"]
    )
    argv, env = server_command(on_a_gpu)
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2" and "--data-parallel-size" not in argv
    assert argv[argv.index("--weight-transfer-config") + 1] == '{"backend": "ipc"}'
    assert env["VLLM_ALLOW_INSECURE_SERIALIZATION"] == "1"
