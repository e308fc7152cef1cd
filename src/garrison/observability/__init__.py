"""Events (structlog) and metrics of garrison."""
