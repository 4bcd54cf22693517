"""The Tradewind cluster: metadata store, scheduler replicas, workers, rpc, observability, CLI."""
