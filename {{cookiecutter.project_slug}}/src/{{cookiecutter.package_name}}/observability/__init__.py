"""What operators see of the service: Prometheus metrics (``metrics.py``), served by the app at
``/metrics`` or on a port of their own (``server.py``), and, when the project was generated with
tracing, OpenTelemetry traces (``tracing.py``)."""
