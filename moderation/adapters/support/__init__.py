"""Helpers shared by adapters (not adapters of a port themselves): the SSRF-guarded HTTP client
and Redis connections with error translation."""
