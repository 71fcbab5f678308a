"""Route table, tag routing, loop guard, dispatch pipeline."""
