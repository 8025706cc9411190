"""Code used by both the gateway and the workers: settings, Redis key names, the queue
protocol and its scripts, WAHA event routing. Neither process imports the other."""
