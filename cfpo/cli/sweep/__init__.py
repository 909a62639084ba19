"""Sweeps: a grid of runs through the pipeline (``grid``), its report (``report``) and its command (``command``)."""
