"""gRPC plumbing shared by schedulers and workers: servers, channels, authentication."""
