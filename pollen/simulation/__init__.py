"""Simulation: N virtual parties on one machine, driving the same coordinator as deployment."""

from pollen.simulation.build import Federation
from pollen.simulation.run import RunResult, centralized, simulate

__all__ = ["Federation", "RunResult", "centralized", "simulate"]
