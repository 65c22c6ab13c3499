"""The web process (``python -m services.web``): an HTTP/JSON API over the jobs gRPC API,
progress as Server-Sent Events, and the static page; no state of its own."""
