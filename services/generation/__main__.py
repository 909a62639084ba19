"""``cfpo serve generation --model DIR [--port P]``: vLLM for this pipeline, in the foreground."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from pydantic import ValidationError

from services.generation.launch import server_command
from services.generation.settings import GenerationSettings


def main(
    model: Path = typer.Option(..., help="local Hugging Face model directory"),
    host: str = typer.Option("127.0.0.1", help="bind address (loopback or a private network only)"),
    port: int = typer.Option(8000),
    device: str = typer.Option("auto", help="auto, cpu or cuda"),
    kv_cache_gib: int = typer.Option(1, help="CPU: KV-cache GiB"),
    max_model_len: int = typer.Option(None, help="default: what the model config allows"),
    cpu_cores: str = typer.Option("all", help="CPU: all (a thread on every core) or vllm (vLLM's own binding)"),
) -> None:
    """Start vLLM's server with token log-probs, weight versions and in-place weight updates."""
    try:
        settings = GenerationSettings(
            model=model,
            host=host,
            port=port,
            device=device,
            kv_cache_gib=kv_cache_gib,
            max_model_len=max_model_len,
            cpu_cores=cpu_cores,
        )
    except ValidationError as error:
        for problem in error.errors():
            typer.echo(f"error: {'.'.join(map(str, problem['loc']))}: {problem['msg']}", err=True)
        raise typer.Exit(2) from None
    argv, env = server_command(settings)
    os.execve(argv[0], argv, env)


if __name__ == "__main__":
    typer.run(main)
