"""What both services need to serve and nothing a client needs: the gRPC server with health,
admission and the decode guard (server.py), tokens and server TLS (auth.py), Prometheus
metrics (metrics.py) and the container health probe (probe.py). Clients import `imagesearch`
(the contract and its client-safe helpers) only."""
