"""Training and evaluation: readable loops over library parts."""
