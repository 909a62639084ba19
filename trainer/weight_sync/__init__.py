"""Moving the learner's weights into the generation service: one module per transport.

``file``: safetensors on storage both can read, loaded in place by the worker extension (CPU and GPU).
``nccl``: vLLM's native NCCL broadcast from the learner's GPU to the generation GPUs (CUDA only).
"""
