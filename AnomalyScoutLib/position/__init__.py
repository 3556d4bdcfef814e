"""Where in the body a slice lies: a body-part regressor, a per-scan fit, and the model's range gate."""
