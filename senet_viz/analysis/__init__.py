"""What the gates say: statistics, channels, exemplars, ablation, cost, attribution, verdict, paper."""
