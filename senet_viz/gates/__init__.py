"""SE gates: their kinds and names, discovery in modules and fx graphs, capture and the census."""
