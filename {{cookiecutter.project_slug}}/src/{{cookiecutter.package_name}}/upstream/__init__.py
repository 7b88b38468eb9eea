"""The shared HTTP client and the upstream services the API calls."""
