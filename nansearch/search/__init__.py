"""The study: its storage, the phases that suggest trials, the queue, the workers and the sweep that drives them."""
