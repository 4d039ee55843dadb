"""The flywheel (paper step S6): curate -> discover -> retrain -> evaluate -> promote, unattended and resumable."""

from downsize.flywheel.config import FlywheelConfig, flywheel_config
from downsize.flywheel.cycle import FlywheelBusy, FlywheelReport, due, run_flywheel, run_loop

__all__ = [
    "FlywheelBusy",
    "FlywheelConfig",
    "FlywheelReport",
    "due",
    "flywheel_config",
    "run_flywheel",
    "run_loop",
]
