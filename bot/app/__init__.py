"""The process: settings, services, start-up, checks, the metrics endpoint, the CLI."""
