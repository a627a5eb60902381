"""`app-rank-monitor demo`: a recorded scenario replayed through the real service in simulated
time (monitor.demo.driver), from a local feed server (monitor.demo.feeds)."""
