"""Simulation: N virtual parties on one machine, driving the same coordinator as deployment."""

from pollen.simulation.run import RunInterrupted, RunResult, centralized, simulate

__all__ = ["RunInterrupted", "RunResult", "centralized", "simulate"]
