"""Evaluation floor (top): comparisons, reports, round trip, ablation scripts and the `lcm` command."""
