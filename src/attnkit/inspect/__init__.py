"""Attention inspection: capture attention maps, head statistics, rollout, heatmaps and an HTML viewer."""
