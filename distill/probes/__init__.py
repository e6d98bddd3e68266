"""EA probes: measure each emergent ability (ICL, CoT, IF) on held-out items."""
