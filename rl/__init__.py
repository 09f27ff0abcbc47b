"""Diversity reward: music embedders, the pairwise 1 - cos reward and REINFORCE estimators."""
