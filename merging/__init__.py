"""Weight merging: theta(lam) = (1 - lam) theta_q + lam theta_d, offline (streaming) and live."""
