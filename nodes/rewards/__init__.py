"""Reward nodes and the models/rewards folder."""
