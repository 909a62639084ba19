"""The reward service: scores completions against references with named, weighted reward functions.

Verifiers run in killable worker processes (``pool``), so one stuck or crashing item costs that item its
reward and nothing else; ``app`` serves them over HTTP, alone (uvicorn) or as Ray Serve replicas (``ray_serve``).
"""
