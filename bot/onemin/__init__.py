"""The 1min.ai adapter: the HTTP client, the fleet-wide rate window, the circuit breaker."""
