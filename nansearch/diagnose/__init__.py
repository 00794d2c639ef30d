"""Why a trial failed: the detector, its findings and the rerun that records them."""
