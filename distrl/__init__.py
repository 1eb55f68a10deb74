"""distrl: distributed actor-learner reinforcement learning for robot control."""

__version__ = "0.1.0"
