"""What the trials say: causes, interactions, conclusions and the ranking."""
