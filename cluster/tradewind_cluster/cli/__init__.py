"""The `tradewind` command line."""
